"""Container engines: base.py is everything the rest of migrate knows about one (the Engine
protocol and its dataclasses); select.py chooses the engine; docker/ is the one we have."""
