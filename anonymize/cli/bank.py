"""``anonymize bank build``: render the latent methods' fake bank ahead of a run (``run`` builds what it lacks otherwise)."""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from anonymize.cli.app import app
from anonymize.cli.console import Device, console, fail, progress_bar, stdout

# Kept free of torch imports so that `anonymize --help` and the other commands start quickly; the
# choices below mirror anonymize.models.registry.GENERATORS and anonymize.methods.latent.bank.DEFAULT_PSI.
DEFAULT_PSI = 0.7

bank_app = typer.Typer(help="Build FALCO's cached bank of fake faces (W codes + FaRL features).", no_args_is_help=True)
app.add_typer(bank_app, name="bank")


class Generator(str, Enum):
    genforce = "genforce"
    e4e = "e4e"


@bank_app.command("build")
def build(
    size: Annotated[int, typer.Option("--size", min=1, help="Number of fake faces (a run needs max(10 x faces, 10000)).")],
    seed: Annotated[int, typer.Option(help="Seed of the z draws; use the seed you will pass to `anonymize run`.")] = 0,
    psi: Annotated[float, typer.Option(min=0.0, max=1.0, help="Truncation psi of the W codes.")] = DEFAULT_PSI,
    generator: Annotated[Generator, typer.Option(help="StyleGAN2 file: GenForce's (FALCO's) or the decoder in e4e's.")] = Generator.genforce,
    weights_dir: Annotated[
        Optional[Path], typer.Option("--weights-dir", envvar="ANONYMIZE_HOME", help="Weights folder (default ~/.cache/anonymize).")
    ] = None,
    device: Annotated[Device, typer.Option(help="Where the generator and FaRL run.")] = Device.auto,
    batch_size: Annotated[Optional[int], typer.Option(min=1, help="Fakes per batch (default 64 on CUDA, 8 on CPU).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the bank's key and path as JSON on stdout.")] = False,
) -> None:
    """Render SIZE fakes and store their codes and features under <weights dir>/banks/ (reused if already there)."""
    from anonymize.methods.latent.bank import BankKey, bank_dir, default_build_batch_size, load_or_build_bank
    from anonymize.methods.latent.stack import require_all
    from anonymize.models.checkpoint import CheckpointError
    from anonymize.models.registry import artefact_of, generator_artefact, load_farl_model, load_generator
    from anonymize.errors import AnonymizeError
    from anonymize.models.device import resolve_device
    from anonymize.weights import WeightsError, WeightsStore

    if psi <= 0:
        fail("--psi must be in (0, 1]")
    generator_name = generator_artefact(generator.value)
    try:
        store = WeightsStore(weights_dir)
        resolved = resolve_device(device.value)
        require_all(store, [generator_name, artefact_of("farl")])
        network = load_generator(store, generator.value, resolved)
        farl = load_farl_model(store, resolved)
    except (AnonymizeError, WeightsError, CheckpointError) as exc:
        fail(str(exc))
    key = BankKey(store.sha256(generator_name) or "", store.sha256(artefact_of("farl")) or "", seed, size, psi)
    with progress_bar("fake bank", quiet=as_json, transient=True) as progress:
        task = progress.add_task("bank", total=size)
        bank, built = load_or_build_bank(bank_dir(store.root), key, network, farl,
                                         batch_size or default_build_batch_size(resolved),
                                         lambda done, _: progress.update(task, completed=done), with_norms=True)
    report = {**key.as_dict(), "path": str(bank.path), "built": built}
    if as_json:
        stdout.print_json(json.dumps(report))
    else:
        console.print(f"{'built' if built else 'already cached'}: {size} fakes in {bank.path}", soft_wrap=True)
