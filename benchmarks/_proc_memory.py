"""Process memory from ``/proc`` for the benchmarks' rows (B6, B13, B14): RSS fields and the peak reset.

*call peak* = ``VmHWM`` read after a call whose high-water mark was reset just before it
(:func:`reset_peak`, ``echo 5 > /proc/self/clear_refs``), so an earlier step's own peak does not count.
"""

KIB = 1024


def status_bytes(field):
    """``/proc/self/status`` field ``field`` (``VmRSS``, ``VmHWM``) in bytes; NaN where /proc is missing."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * KIB  # kB in /proc = KiB
    except OSError:
        pass
    return float("nan")


def reset_peak():
    """Resets the kernel's RSS high-water mark (VmHWM) to the current RSS; False where not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False
