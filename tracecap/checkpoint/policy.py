"""The decisions behind the restricted unpickler: what a global, a call and a BUILD turn into.

The format readers (tar, legacy, zip) plug in ``persistent_load`` — how their pickles point at
tensor data — and share everything else defined here.
"""
from __future__ import annotations

import torch

from tracecap.errors import CheckpointError

from . import numpy_rebuild, quantized, tensor_rebuild  # noqa: F401  (register their allow-list entries)
from .allowlist import SafeCall, describe_callee, resolve_global
from .module_tree import ModuleNode, looks_like_module
from .placeholders import ClassRef, Opaque
from .unpickler import Policy


class CheckpointPolicy(Policy):
    """Safe answers for one checkpoint; collects what it saw for the inspection report."""

    def __init__(self, persistent_load=None, nested_loader=None):
        self._persistent_load = persistent_load
        self._nested_loader = nested_loader
        self.unknown = {}  # class path -> ClassRef, for every global not on the allow-list
        self.used = set()  # allow-listed callables the file used (tells the writer's era)
        self.notes = []

    def note(self, message: str) -> None:
        if message not in self.notes:
            self.notes.append(message)

    def find_global(self, module, name):
        return resolve_global(module, name, self.unknown)

    def call(self, func, args, kwargs, new):
        if type(func) is SafeCall:
            self.used.add(func.path)
            return func.fn(self, args, kwargs, new)
        if type(func) is ClassRef:
            return Opaque(func, args, kwargs)  # instantiate nothing: remember what was asked
        raise CheckpointError(f"the pickle tries to call {describe_callee(func)}, which tracecap does not allow")

    def build(self, inst, state):
        if isinstance(inst, Opaque):
            if quantized.is_quantized_conv_state(inst.class_path, state):  # a 15-field tuple, not a __dict__
                state = quantized.conv_state_as_module(state)
            inst.state = state
            if looks_like_module(inst.attributes()):
                ModuleNode.adopt(inst)
        elif isinstance(inst, torch.Tensor):
            tensor_rebuild.set_tensor_state(inst, state)
        elif isinstance(inst, dict) and hasattr(inst, "__dict__"):  # OrderedDict._metadata, Counter ...
            tensor_rebuild._set_attributes(inst, state)
        else:
            raise CheckpointError(f"the pickle sets state on a {type(inst).__name__}, which tracecap does not allow")

    def persistent_load(self, pid):
        if self._persistent_load is None:
            raise CheckpointError("a plain pickle must not contain persistent ids")
        return self._persistent_load(pid)

    def load_nested(self, data: bytes):
        if self._nested_loader is None:
            raise CheckpointError("storages nested inside nested storages are not supported")
        return self._nested_loader(data)
