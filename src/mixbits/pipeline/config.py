"""The one settings type of the pipeline, and its two jobs' extensions.

:class:`Settings` holds every setting a stage reads (data, model, candidate bits,
epochs, learning rates, the held-out split, distillation, fine-tuning rules).
:class:`RunConfig` adds what one ``mixbits search`` run chooses (one method, one
target, one seed); :class:`SweepConfig` adds the lists a sweep walks (methods,
targets, seeds) and its outputs. Both are checked field by field against
:data:`mixbits.settings.BOUNDS` by the command line before anything runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from .._imports import import_callable
from ..budget import parse_target
from ..granularity import parse_granularity
from ..methods import DEFAULT_METHOD, DEFAULT_POST_TRAINING_METHOD, METHODS
from ..space import DEFAULT_CANDIDATES

__all__ = ["Settings", "RunConfig", "SweepConfig", "parse_method", "loss_function", "DEFAULT_METHOD",
           "DEFAULT_POST_TRAINING_METHOD"]


@dataclass(frozen=True, kw_only=True)
class Settings:
    """What every stage reads; shared by ``mixbits search`` and ``mixbits sweep``.

    Attributes:
        data, data_root, model: the data set, where it lives, the model name.
        candidates: the bitwidths a layer may take.
        pins: {layer glob: bits} fixed before the allocation; exclude: layer globs kept in float.
        params: fully qualified names of other parameters to quantize (``PrepareConfig.params``).
        loss: ``package.module:function`` computing ``loss(outputs, labels)`` -> a mean-reduced scalar,
            the task loss of the allocation (Hessian traces, search) and the fine-tuning; None:
            cross-entropy. The data sets of the pipeline have class labels, so test accuracy is still
            reported.
        granularity: one bitwidth per ``layer``, ``channel``, ``group:N`` or ``head`` (see
            :mod:`mixbits.granularity`).
        float_epochs, float_lr: the float training (skipped with ``checkpoint``).
        search_epochs: epochs the allocation may spend (the ``search`` method trains weights in them;
            with ``post_training`` its logits learn in them on the frozen weights).
        finetune_epochs, finetune_lr: the fine-tuning at the fixed bits (None: 10, or 0 with
            ``post_training``, which allows no other value).
        post_training: no weight update at all: float weights -> allocation (learned methods learn
            their logits on the frozen weights, on calibration batches of the training split) ->
            BatchNorm statistics re-estimated -> evaluation -> export.
        calibration: the most training images the allocation and the BatchNorm re-estimation read
            (the first images of the fixed held-out split; None: no bound).
        batch_size: training batch size of every stage.
        held_out_fraction: the training data held out for the search's logits; the split is
            fixed (the same images for every run, method and seed).
        distill: distil from the float model in the search and the fine-tuning.
        finetune_from: ``"method"``: fine-tune the weights the method hands over; ``"float"``:
            restart from the float weights, so results differ only by the bits.
        compute_matched: every method gets ``search_epochs + finetune_epochs`` weight epochs in
            all (a method that trains no weights while it allocates is fine-tuned that much longer);
            False: ``finetune_epochs`` whatever the method spent.
        train_subset, test_subset: use only this many (fixed, seeded) samples, for quick runs.
        device: auto, cpu, cuda, cuda:N or mps.
        out: the output folder; checkpoint: a float checkpoint instead of the float training.
    """

    data: str = "digits"
    data_root: str | None = None
    model: str = "digits_cnn"
    candidates: tuple[int, ...] = DEFAULT_CANDIDATES
    pins: Mapping[str, int] = field(default_factory=dict)
    exclude: tuple[str, ...] = ()
    params: tuple[str, ...] = ()
    loss: str | None = None
    granularity: str = "layer"
    float_epochs: int = 30
    search_epochs: int = 10
    finetune_epochs: int | None = None
    batch_size: int = 64
    float_lr: float = 0.05
    finetune_lr: float = 0.01
    held_out_fraction: float = 0.2
    distill: bool = True
    finetune_from: str = "method"
    compute_matched: bool = True
    train_subset: int | None = None
    test_subset: int | None = None
    device: str = "auto"
    out: str | None = None
    checkpoint: str | None = None
    post_training: bool = False
    calibration: int | None = None

    def __post_init__(self) -> None:
        for name in ("candidates", "exclude", "params"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        loss_function(self)  # a bad loss fails here, before any training
        if not self.candidates:
            raise ValueError("candidates is empty; give at least one bitwidth")
        object.__setattr__(self, "granularity", parse_granularity(self.granularity).text)
        for pattern, bits in dict(self.pins).items():
            if bits not in self.candidates:
                raise ValueError(f"pin {pattern}={bits}: {bits} bits is not a candidate "
                                 f"({','.join(map(str, self.candidates))}); pin one of them, or add {bits} to the "
                                 f"candidates (--bits {','.join(map(str, sorted({*self.candidates, bits})))})")
        if self.post_training:
            if self.finetune_epochs not in (None, 0):
                raise ValueError(f"post_training updates no weight, but finetune_epochs = {self.finetune_epochs} was "
                                 f"given: drop finetune_epochs (--finetune-epochs), or drop post_training "
                                 f"(--post-training) to fine-tune")
            object.__setattr__(self, "finetune_epochs", 0)
        elif self.finetune_epochs is None:
            object.__setattr__(self, "finetune_epochs", 10)
        if self.calibration is not None and self.calibration < 1:
            raise ValueError(f"calibration must be >= 1 images, got {self.calibration}")
        for name in ("float_epochs", "finetune_epochs"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.post_training and self.search_epochs < 1:
            raise ValueError(f"search_epochs must be >= 1, got {self.search_epochs}")
        if not self.post_training and self.search_epochs < 2:
            raise ValueError(f"search_epochs must be >= 2 (one warm-up epoch, then the search), got {self.search_epochs}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.finetune_from not in ("method", "float"):
            raise ValueError(f"finetune_from must be 'method' or 'float', got {self.finetune_from!r}")
        for name, least in (("train_subset", 1), ("test_subset", 2)):
            v = getattr(self, name)
            if v is not None and v < least:
                raise ValueError(f"{name} must be >= {least} samples, got {v}")


@dataclass(frozen=True, kw_only=True)
class RunConfig(Settings):
    """Every setting of a ``mixbits search`` run: the :class:`Settings`, one method, target and seed.

    Attributes:
        method: a registered method name (None: :data:`DEFAULT_METHOD`, or
            :data:`DEFAULT_POST_TRAINING_METHOD` with ``post_training``).
        method_options: {option: value} of that method.
        target: the size target, e.g. ``"24x"``, ``"300KB"``, ``"1.5bits"``.
        seed: seeds the model, the shuffling and the method.
    """

    method: str | None = None
    method_options: Mapping[str, Any] = field(default_factory=dict)
    target: str = "24x"
    seed: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.method is None:
            object.__setattr__(self, "method", DEFAULT_POST_TRAINING_METHOD if self.post_training else DEFAULT_METHOD)
        parse_target(self.target)


@dataclass(frozen=True, kw_only=True)
class SweepConfig(Settings):
    """Every setting of ``mixbits sweep``: the :class:`Settings`, and the lists a sweep walks.

    Attributes:
        methods: method names, or ``uniform:K`` for every layer at K bits.
        targets: size targets, e.g. ("8x", "16x", "24x", "28x").
        seeds: seeds; every (method, target) runs once per seed (the first also seeds the float model).
        method_options: {method name: {option: value}}.
        binary_point: also fine-tune the all-binary model (``uniform:1``), marked on the plot.
        plot: write ``pareto.png`` (needs matplotlib: ``pip install mixbits[plot]``).
        keep_models: keep every row's fine-tuned model in ``rows/<method>-<target>-seed<seed>/``
            (``finetuned.pt`` and ``model.mbits``): ``mixbits export`` takes that folder like a run's.
    """

    methods: tuple[str, ...] = ("search", "hessian", "random", "uniform")
    targets: tuple[str, ...] = ("8x", "16x", "24x", "28x")
    seeds: tuple[int, ...] = (0,)
    method_options: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    binary_point: bool = True
    plot: bool = True
    keep_models: bool = True

    def __post_init__(self) -> None:
        for name in ("methods", "targets", "seeds"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
            if not getattr(self, name):
                raise ValueError(f"sweep: {name} is empty; give at least one")
        super().__post_init__()
        for t in self.targets:
            parse_target(t)
        for m in self.methods:
            parse_method(m)


def loss_function(settings: Settings) -> Callable[[Any, Any], Any] | None:
    """The loss the settings name (``package.module:function``, imported), or None for cross-entropy.

    Raises:
        ValueError: a malformed name, or a module or function that cannot be imported.
    """
    return None if settings.loss is None else import_callable(str(settings.loss), "loss")


def parse_method(spec: str) -> tuple[str, dict[str, Any]]:
    """``"uniform:4"`` -> ("uniform", {"bits": 4}); ``"hessian"`` -> ("hessian", {}).

    Raises:
        ValueError: an unknown method or a malformed ``uniform:K``.
    """
    name, sep, arg = str(spec).partition(":")
    METHODS.get(name)
    if not sep:
        return name, {}
    if name != "uniform":
        raise ValueError(f"method {spec!r}: only uniform takes an argument (uniform:K, K bits)")
    try:
        return name, {"bits": int(arg)}
    except ValueError:
        raise ValueError(f"method {spec!r}: write uniform:K with K an integer number of bits") from None
