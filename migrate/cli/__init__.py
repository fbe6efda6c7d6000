"""The command line (typer): one module per command group, rendering apart. The only place that
prints or exits."""
