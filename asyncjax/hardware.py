"""What machine this is, in words: the CPU model beside every speed figure and cache key.

Speed choices that differ between CPUs (models/conv.py's weight-gradient form) are measured per
machine and cached under `cpu_model()`; benchmarks print it in their JSON line as `cpu`.
"""
from __future__ import annotations

import functools
import platform


@functools.lru_cache(maxsize=None)
def cpu_model() -> str:
    """e.g. 'AMD EPYC 9R14 (family 25 model 17, avx512)' or 'Intel(R) Xeon(R) Processor (family 6
    model 143, avx512, amx)'. Virtual machines often hide the marketing name, so the CPUID family,
    model and the vector extensions that change XLA:CPU's code generation are part of the name."""
    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if not line.strip():
                    break  # The first processor's block is enough.
                key, _, value = line.partition(":")
                fields[key.strip()] = value.strip()
    except OSError:
        return platform.processor() or platform.machine() or "unknown CPU"
    name = fields.get("model name", platform.processor() or "unknown CPU")
    flags = set(fields.get("flags", "").split())
    extras = [f"family {fields['cpu family']} model {fields['model']}"] if "cpu family" in fields else []
    extras += [label for flag, label in (("avx512f", "avx512"), ("amx_tile", "amx")) if flag in flags]
    return f"{name} ({', '.join(extras)})" if extras else name


def device_name() -> str:
    """What trains in this process, in words: the CPU model (cpu_model) on JAX's CPU backend, else
    the accelerator's kind as JAX names it ('NVIDIA H200', 'TPU v5 lite'). Results record the
    seconds each one trained (results.json `trained_on_s`), since a run may move between machines."""
    import jax  # Here, not at the top: benchmarks read cpu_model without starting JAX.

    device = jax.devices()[0]
    return cpu_model() if device.platform == "cpu" else device.device_kind


def total_seconds(records) -> dict:
    """{device: seconds} summed over `records`, each {device_name: seconds} (a run's phases, a
    row's seeds)."""
    total = {}
    for record in records:
        for name, seconds in record.items():
            total[name] = total.get(name, 0.0) + seconds
    return total


def short_name(name: str) -> str:
    """A table's form of a device_name: 'Intel Xeon (family 6 model 167)' for 'Intel(R) Xeon(R)
    Processor (family 6 model 167, avx512, amx)'; an accelerator's kind unchanged."""
    import re

    name = re.sub(r"\((R|TM)\)| Processor|, avx512|, amx", "", name)
    return re.sub(r"\s+", " ", name).strip()
