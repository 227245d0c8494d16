"""Jobs: when a study is complete, which series to analyse, the worker, the processor contract."""
