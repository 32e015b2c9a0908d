"""``fedge-coordinator models``: build trainable .tflite models from layer specs or Keras Sequential
models (``.keras``). Thin: one library call.

The builder (``fedge.agent.training.modelgen.custom``) needs TensorFlow, the ``modelgen`` extra;
without it the command prints one line naming the extra (``cliutil.run``).
"""

from __future__ import annotations

import click


@click.group("models")
def models() -> None:
    """Trainable models from layer specs (TOML) or Keras Sequential models (.keras); see docs/training.md."""


@models.command("build")
@click.argument("specs", nargs=-1, required=True, type=click.Path(dir_okay=False, exists=True))
@click.option(
    "--out", required=True, type=click.Path(file_okay=False), help="Directory for <name>.tflite and <name>.json."
)
@click.option("--check", is_flag=True, help="Rebuild and compare with the files in --out byte for byte; write nothing.")
def models_build(specs: tuple[str, ...], out: str, check: bool) -> None:
    """Build each SPEC, check it against its numpy reference on the installed runtime, write it to --out.

    SPEC is a layer spec (.toml) or a Keras Sequential saved with model.save('NAME.keras'): translated
    into the same spec (its weights become the initial weights, the model is named after the file) and
    also held to Keras's own outputs."""
    from fedge.agent.training.modelgen.custom import build_file, same_as_written, write

    differs = []
    for spec in specs:
        built = build_file(spec)
        head = (
            f"{built.net.name}: {len(built.data)} bytes, {built.net.num_params} params, built and checked in "
            f"{built.seconds:.1f} s on {built.runtime}"
        )
        if check:
            same = same_as_written(built, out)
            click.echo(f"{built.net.name}: {'identical' if same else 'DIFFERS'}")
            differs += [] if same else [built.net.name]
            continue
        tfl, _ = write(built, out)
        click.echo(f"{head} -> {tfl}")
        for line in built.lines():
            click.echo(f"  {line}")
    if differs:
        raise click.ClickException(f"rebuilt models differ from --out: {', '.join(differs)}")


COMMANDS = [models]
