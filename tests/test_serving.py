"""Every service tunes the cycle collector before it serves."""

import subprocess
import sys

from mailfleet_common.serving import GC_GEN0_THRESHOLD


def test_services_collect_cycles_rarely_and_never_walk_what_was_loaded_at_start() -> None:
    script = (
        "import gc; from mailfleet_common.serving import tune_gc; tune_gc(); "
        "print(gc.get_threshold()[0], gc.get_freeze_count())"
    )
    output = subprocess.run(
        [sys.executable, "-c", script], check=True, capture_output=True, text=True
    ).stdout.split()
    assert int(output[0]) == GC_GEN0_THRESHOLD
    assert int(output[1]) > 10_000  # the modules and objects alive at start
