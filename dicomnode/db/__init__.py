"""The node's database: typed models, engine, migrations, queue (all SQL lives here)."""
