"""How every poco node starts rclpy, so that Ctrl-C / SIGTERM stop it cleanly wherever it is.

rclpy's own signal handler shuts the context down (spin() then returns or raises ExternalShutdownException and the
node's `finally` runs) and afterwards calls the Python handler it found. Python's default SIGINT handler raises
KeyboardInterrupt at whatever bytecode the main thread is on. Inside rclpy's C++ conversion of an incoming message
that surfaces as "RuntimeError: Unable to convert call argument '0' to Python object", which no `except
KeyboardInterrupt` catches: the policy node crashed on stop while the sim's messages streamed in (CI, split
deployment; a stand-alone repro crashed in 4 of 8 stops). So a first SIGINT only stops (through rclpy); a second
one, for a stop that hangs, raises as before.

`spin` then runs the executor until that stop. rclpy shuts the context down from its own thread, so a spin can
still meet a half-torn-down context ("failed to initialize wait set: the given context is not valid"): an error
raised once the context is no longer ok is the stop itself, reported in one line; one raised while the context
is ok is a real error and propagates.
"""
from __future__ import annotations

import signal
import sys


def init_ros(args=None) -> None:
    """`rclpy.init(args=args)` with the quiet first Ctrl-C described above (call from the main thread)."""
    import rclpy

    presses = []

    def on_sigint(signum, frame):
        presses.append(signum)
        if len(presses) > 1:  # impatient second Ctrl-C: the old behaviour
            raise KeyboardInterrupt

    signal.signal(signal.SIGINT, on_sigint)  # before rclpy.init: rclpy chains to the handler it finds here
    rclpy.init(args=args)


def spin(executor) -> None:
    """Run `executor` until Ctrl-C / SIGTERM / rclpy.shutdown; the caller's `finally` cleans up."""
    from rclpy.executors import ExternalShutdownException
    try:
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except Exception as e:  # noqa: BLE001 - only when stopping, see the module docstring
        if executor.context.ok():
            raise
        print(f'stopped while rclpy tore down ({type(e).__name__}: {e})', file=sys.stderr)
