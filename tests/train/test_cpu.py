"""rmm.train.cpu: what every training process switches on, observed in a fresh interpreter (the settings are
process-wide, so they are measured before and after in a process of their own)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

PROBE = textwrap.dedent("""
    import resource
    import torch
    from rmm.train.cpu import prepare_cpu_process

    def page_faults_of_churn():
        # a step's large temporaries: 64 MiB allocated, written and freed, five times
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for _ in range(5):
            torch.empty(16 * 2**20).fill_(1.0)
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

    subnormal = torch.tensor([1e-39])
    print(page_faults_of_churn(), float(subnormal * 1.0))
    prepare_cpu_process()
    page_faults_of_churn(), page_faults_of_churn()  # the heap settles at the size (glibc: a few rounds)
    print(page_faults_of_churn(), float(subnormal * 1.0))
""")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator and x86 flush-to-zero")
def test_training_processes_reuse_freed_pages_and_flush_subnormals() -> None:
    out = subprocess.run([sys.executable, "-c", PROBE], check=True, capture_output=True, text=True).stdout.split()
    faults_before, faults_after = int(out[0]), int(out[2])
    subnormal_before, subnormal_after = float(out[1]), float(out[3])
    assert faults_before > 5 * 1000  # each 64 MiB block mapped and zero-filled anew (4 KiB pages: 16k each)
    assert faults_after < faults_before / 20, (faults_before, faults_after)
    assert subnormal_before > 0 and subnormal_after == 0.0
