"""The Ray session of a parallel run: Ray imported on demand (it is optional), and an
embedded Ray started on this machine unless one is running or a cluster is named."""

from __future__ import annotations

import os

from ..errors import SparsetrainError

#: Actor calls carry arrays up to this size inline (no object-store round trip): a push
#: of the Fashion-MNIST preset is about 0.5 MB each way.
_INLINE_BYTES = 8 << 20


def import_ray():
    """The ``ray`` module, or a SparsetrainError saying how to install it."""
    try:
        import ray
    except ImportError:
        raise SparsetrainError("parallel training needs Ray: pip install -e \".[parallel]\" "
                               "(or pip install 'ray>=2.9')") from None
    return ray


class RaySession:
    """Context manager: an embedded Ray on this machine (loopback, no dashboard) unless Ray
    is already initialised or ``address`` names a cluster; shut down on exit only if it
    was started here."""

    def __init__(self, address: str | None = None, num_cpus: int | None = None):
        self.address = address
        self.num_cpus = num_cpus
        self.started = False
        self._restore = []

    def __enter__(self):
        ray = import_ray()
        if ray.is_initialized():
            return self
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        kwargs = dict(include_dashboard=False, log_to_driver=False, configure_logging=True,
                      logging_level="error")
        try:
            if self.address:
                ray.init(address=self.address, **kwargs)
            else:
                self._loopback_only(ray)
                ray.init(address="local", num_cpus=self.num_cpus, _node_ip_address="127.0.0.1",
                         _system_config={"max_direct_call_object_size": _INLINE_BYTES,
                                         "task_rpc_inlined_bytes_limit": 8 * _INLINE_BYTES},
                         **kwargs)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            self.__exit__(None, None, None)
            where = f"the Ray cluster at {self.address!r}" if self.address else "an embedded Ray"
            raise SparsetrainError(f"could not start or join {where}: {exc}") from None
        self.started = True
        return self

    def __exit__(self, *exc):
        if self.started:
            import_ray().shutdown()
        for restore in self._restore:
            restore()
        self._restore = []
        return False

    def _loopback_only(self, ray) -> None:
        """Make the embedded Ray's servers (GCS, raylet, workers) listen on 127.0.0.1 only.

        Ray (2.x on Linux) turns a node address of 127.0.0.1 into the machine's network
        address and listens there, on all interfaces in older versions; its own switch for
        single-machine use (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``, the default on macOS
        and Windows) keeps every server on the loopback address. It is read at import (a
        module constant, set here for this process) and by Ray's child processes (the
        environment). Both are restored on exit, so a later cluster join is unaffected.
        """
        try:
            from ray._private import ray_constants
        except ImportError:  # a Ray without the switch: its own defaults apply
            return

        var = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
        old_env, old_const = os.environ.get(var), getattr(ray_constants, "ENABLE_RAY_CLUSTER", None)
        os.environ[var] = "0"
        ray_constants.ENABLE_RAY_CLUSTER = False

        def restore():
            if old_env is None:
                os.environ.pop(var, None)
            else:
                os.environ[var] = old_env
            if old_const is not None:
                ray_constants.ENABLE_RAY_CLUSTER = old_const
        self._restore.append(restore)
