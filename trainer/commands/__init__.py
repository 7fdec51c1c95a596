"""The trainer's commands, one module each, every module with the same two functions:

* ``add_parser(subparsers)``: adds the command's parser (its flags and help);
* ``run(args) -> int``: runs it and returns the exit code (``trainer.exits``).

The command's work lives in the trainer module it names (``trainer.lineup`` for ``train``); ``trainer/cli.py``
turns the errors it raises into exit codes. A new command is a new module here, added to ``COMMANDS``.
"""

from trainer.commands import (
    card,
    ensemble,
    env,
    evaluate,
    explain,
    export,
    faithfulness,
    focus,
    lungs,
    models,
    population,
    report,
    shift,
    site,
    train,
)

__all__ = ["COMMANDS"]

# in the order ``python -m trainer --help`` lists them
COMMANDS = (models, env, train, ensemble, report, evaluate, shift, export, lungs, focus, explain, faithfulness,
            site, card, population)

