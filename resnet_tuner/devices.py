"""What a trial trains on: the dtype policy (`precision`) and the devices (`devices`).

Two run settings, each resolved once per process from what the machine has:

* `resolve_precision("auto")` is the rule below, on facts a test can fake
  (`gpu_capabilities`, `cpu_flags`); the others pass through.
* `distribution_strategy("all" | N)` is the `tf.distribute.MirroredStrategy`
  that keras-tuner builds each trial's model under (its `distribution_strategy=`
  tuner argument), or None for one device, as without the setting.

The `auto` rule (bench/precision.py measures the CPU side):

* a visible GPU whose compute capability is 7.0 or more on every GPU (tensor
  cores: Volta and later) -> `mixed_float16`;
* no GPU, and a CPU with native bfloat16 arithmetic (`/proc/cpuinfo` flag
  `amx_bf16` or `avx512_bf16`) -> `mixed_bfloat16`;
* otherwise `float32`. Without those flags TensorFlow emulates bfloat16 and
  mixed_bfloat16 trains slower than float32 (0.11x on a 2-core AMD EPYC
  with AVX2 only: bench/precision.py; with AVX512_BF16, another EPYC of the
  project's, it trained 1.16-1.26x faster: bench/throughput.py).

Nothing here imports TensorFlow at module load; the CLI's parser reads the
names only.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

from resnet_tuner.config import PRECISIONS

#: `--precision` choices: the Keras policies and `"auto"`.
PRECISION_CHOICES = ("auto", *PRECISIONS)
#: Compute capability from which a GPU has float16 tensor cores (Volta).
TENSOR_CORES = (7, 0)
#: CPU flags (as `/proc/cpuinfo` names them) of native bfloat16 arithmetic.
BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")


def gpu_capabilities() -> list[tuple[int, int]]:
    """Compute capability `(major, minor)` of each visible GPU (`(0, 0)` when unknown)."""
    import tensorflow as tf

    capabilities = []
    for gpu in tf.config.list_physical_devices("GPU"):
        try:
            details = tf.config.experimental.get_device_details(gpu)
        except (ValueError, RuntimeError):
            details = {}
        capabilities.append(tuple(details.get("compute_capability") or (0, 0)))
    return capabilities


def cpu_flags(cpuinfo: str | Path = "/proc/cpuinfo") -> set[str]:
    """The instruction-set flags of the CPU (Linux `/proc/cpuinfo`; empty elsewhere)."""
    try:
        text = Path(cpuinfo).read_text(errors="replace")
    except OSError:
        return set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return set(value.split())
    return set()


def resolve_precision(precision: str = "auto", *,
                      gpus: Sequence[tuple[int, int]] | None = None,
                      flags: Iterable[str] | None = None) -> str:
    """The Keras dtype policy `precision` names; `"auto"` by the module's rule.

    Args:
        precision: `"auto"` or one of `config.PRECISIONS`.
        gpus: the GPUs' compute capabilities (default: `gpu_capabilities()`).
        flags: the CPU's flags (default: `cpu_flags()`).

    Returns:
        `"float32"`, `"mixed_float16"` or `"mixed_bfloat16"`.

    Raises:
        ValueError: an unknown name.

    Example:
        >>> resolve_precision("auto", gpus=[(8, 0)])
        'mixed_float16'
        >>> resolve_precision("auto", gpus=[], flags={"avx2"})
        'float32'
    """
    if precision not in PRECISION_CHOICES:
        raise ValueError(f"precision must be one of {PRECISION_CHOICES}. "
                         f"Received: precision={precision!r}")
    if precision != "auto":
        return precision
    gpus = gpu_capabilities() if gpus is None else list(gpus)
    if gpus:
        return "mixed_float16" if min(tuple(g) for g in gpus) >= TENSOR_CORES else "float32"
    flags = cpu_flags() if flags is None else set(flags)
    return "mixed_bfloat16" if flags & set(BF16_CPU_FLAGS) else "float32"


def parse_devices(text: str) -> str | int:
    """`--devices` value: `"all"` or a positive integer."""
    import argparse

    if text == "all":
        return "all"
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected 'all' or a positive integer, got {text!r}")
    return value


def check_devices(devices) -> None:
    """Raises ValueError unless `devices` is None, `"all"` or a positive integer."""
    if devices is None or devices == "all" or (
            isinstance(devices, int) and not isinstance(devices, bool) and devices >= 1):
        return
    raise ValueError(f"devices must be 'all' or a positive integer. Received: devices={devices!r}")


def training_devices(devices: str | int | None) -> list[str]:
    """The devices a trial trains on: the GPUs if any are visible, else the CPU devices.

    Args:
        devices: `"all"`, a count (the first N), or None (one device).

    Raises:
        ValueError: more devices asked for than are visible (naming them).
    """
    import tensorflow as tf

    check_devices(devices)
    visible = tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU")
    names = [d.name for d in visible]
    if devices is None:
        return names[:1]
    if devices == "all":
        return names
    if devices > len(names):
        raise ValueError(
            f"devices={devices} but this machine shows {len(names)}: {', '.join(names)}. "
            "Use --devices all, or a smaller count.")
    return names[:devices]


def distribution_strategy(devices: str | int | None):
    """A `tf.distribute.MirroredStrategy` over `training_devices(devices)`, or None for one.

    keras-tuner builds each trial's model in its scope (`distribution_strategy=`);
    `fit` then splits every batch across the replicas: the batch size is the
    global batch, each replica computing `batch_size / replicas` of it
    (BatchNormalization statistics are per replica).
    """
    if devices is None or devices == 1:
        return None
    names = training_devices(devices)
    if len(names) < 2:
        return None
    import tensorflow as tf

    return tf.distribute.MirroredStrategy(names)


def replicas(strategy) -> int:
    """The number of model replicas a strategy trains (1 for None)."""
    return int(strategy.num_replicas_in_sync) if strategy is not None else 1


def training_record(precision: str | None, strategy, batch_size: int | None) -> dict:
    """How a trial trained, for its `history.json` and the model card: the dtype
    policy, the replicas, the global batch and each replica's share of it."""
    count = replicas(strategy)
    per_replica = batch_size // count if batch_size and batch_size % count == 0 else (
        batch_size and batch_size / count)  # tf.distribute splits an uneven batch unevenly
    return {"precision": precision, "replicas": count, "batch_size": batch_size,
            "batch_size_per_replica": per_replica}
