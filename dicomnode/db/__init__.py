"""The node's database: typed models, engine setup, migrations and the queue (all SQL lives here)."""
