"""The CLI's commands, a module per group; each module's `register` adds its
commands to the parser that client/cli.py builds."""
