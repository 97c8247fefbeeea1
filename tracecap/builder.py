"""The builder: turn the recorder's events into a Graph by tensor identity.

Every tensor an op reads is looked up by its ``TensorRef.key`` (the recorder gives each tensor object
one, unique for the whole capture even where CPython reuses ``id()``s of dead tensors). A tensor whose
``_version`` went up during an op was written in place: it gets a new blob
version (``x@1``), so later readers link to the value they really read. A tensor
no op produced is a parameter/buffer (known from the module scopes), a graph
input (an argument of a call made from the ``with`` block), an alias of a known
tensor (``Variable(x)``, ``x.data``: same storage, offset, shape and strides) or
a constant. Results computed only from constants are constants themselves.
"""
from __future__ import annotations

import torch

from tracecap import ops as opslib
from tracecap import views
from tracecap.errors import CaptureError
from tracecap.graph import Blob, Graph, Quantization, has_containers, map_structure
from tracecap.recorder import TensorRef, _version, alias_key


def _flat_with_paths(prefix, obj, out):
    if isinstance(obj, torch.Tensor):
        out.append((prefix, obj))
    elif isinstance(obj, (list, tuple)):
        for i, o in enumerate(obj):
            _flat_with_paths(f"{prefix}.{i}" if prefix else str(i), o, out)
    elif isinstance(obj, dict):
        for k, o in obj.items():
            _flat_with_paths(f"{prefix}.{k}" if prefix else str(k), o, out)
    return out


def _sub(obj, lookup):
    """obj with every tensor replaced by its Blob."""
    def blob_of(o):
        return lookup[o.key] if type(o) is TensorRef else o
    if type(obj) is dict and not has_containers(obj.values()):  # the common, flat case
        return {k: blob_of(v) for k, v in obj.items()}
    if type(obj) is tuple and not has_containers(obj):
        return tuple(blob_of(v) for v in obj)
    return map_structure(obj, blob_of)


def _slot_of(params, tensor):
    for name, value in params.items():
        if value is tensor:
            return name
    return None


class Builder:
    def __init__(self, recorder, inputs=None, outputs=None):
        self.rec = recorder
        self.g = Graph()
        # tensors are TensorRefs (recorder.py), keyed by TensorRef.key
        self.current = {}      # key -> latest Blob for it
        self.version = {}      # key -> its _version when last bound (None: unknown, not checked)
        self.holders = {}      # id(Blob) -> keys of the tensor objects bound to it (aliases share a blob)
        self.aliases = {}      # alias key -> [(Blob, TensorRef)] in binding order (one holder may have died)
        self.sharing = {}      # key of a base tensor -> {key: ref} of it and its views (to follow writes)
        self.bound = {}        # key -> the TensorRef, for every tensor bound to a blob
        self.unfollowable = {}  # key -> why a write through a view left its value unknown
        self.escapes = []      # (op, source) of calls that turned data into Python values
        self.inference_warned = False
        self.explicit_inputs = inputs
        self.explicit_outputs = outputs
        self.outer_args = {}   # key (and alias key) of a tensor passed to a call from the block -> path
        for call in recorder.outer_calls:
            for path, t in _flat_with_paths("", dict(call.arguments), []):
                self.outer_args.setdefault(recorder.ref_of(t).key, path)
                self.outer_args.setdefault(alias_key(t), path)

    # ---- entry ------------------------------------------------------------------------
    def build(self):
        if self.explicit_inputs is not None:
            for i, (path, t) in enumerate(_flat_with_paths("", self.explicit_inputs, [])):
                self._new_source(self.rec.ref_of(t), "input", path or f"input{i}")
        for ev in self.rec.events:
            self._add_event(ev)
        self._set_outputs()
        self._check_inputs()
        if self.explicit_inputs is None:  # the order of the call's arguments, not of first use
            order = {path: k for k, path in enumerate(p for p in self.outer_args.values())}
            self.g.inputs.sort(key=lambda b: order.get(b.meta.get("path"), len(order)))
        self.g.warnings.extend(f"{op} at {src} turned tensor data into a Python value; anything computed "
                               f"from it is a constant in the graph" for op, src in self.escapes)
        return self.g

    # ---- blobs --------------------------------------------------------------------------
    def _bind_blob(self, t, blob, version):
        self.current[t.key] = blob
        self.bound[t.key] = t
        if self.unfollowable:
            self.unfollowable.pop(t.key, None)
        self.version[t.key] = version
        self.holders.setdefault(id(blob), []).append(t.key)
        key = t.alias_key()
        if key is not None:
            holders = self.aliases.get(key)
            if holders is None:
                self.aliases[key] = [(blob, t)]
            elif holders[-1][1] is not t:
                holders.append((blob, t))
        base = self._base(t)
        if base is not None:  # views share storage with their base (torch keeps the root there)
            family = self.sharing.setdefault(base.key, {base.key: base})
            family[t.key] = t

    def _base(self, t):
        """The TensorRef of the base of view ``t``, or None (views are held, so a dead ref is no view)."""
        if t.held is None:
            return None
        base = t.held._base
        return None if base is None else self.rec.ref_of(base)

    def _alias(self, key, index=None):
        """The blob of a tensor with alias key ``key`` alive at event ``index`` (None: now), or None.
        A dead tensor's buffer may hold another tensor since: that one is no alias of it."""
        for blob, holder in self.aliases.get(key, ()):
            if holder.alive_at(index) if index is not None else holder.tensor is not None:
                return blob
        return None

    @staticmethod
    def _value(t, ev):
        """The tensor behind a ref whose value the graph keeps (a constant): held by the recorder."""
        value = t.tensor
        if value is None:
            raise CaptureError(f"{describe(ev)}: the value of a constant tensor (shape {list(t.shape)}) was freed "
                               f"before the graph was built; tracecap kept only a weak reference to it because "
                               f"it looked computed from the inputs. Name the inputs with cap.build(inputs=...) "
                               f"as they were passed to the calls in the block.")
        return value

    def _new_source(self, t, kind, name):
        tensor = t.tensor
        if tensor is None:
            raise CaptureError(f"a tensor of shape {list(t.shape)} needed as the graph's {kind} `{name}` was freed "
                               f"before the graph was built")
        blob = self.g.add_blob(name, kind, tuple(tensor.shape), tensor.dtype,
                               value=tensor if kind != "input" else None, quant=Quantization.of(tensor))
        blob.meta["path"] = name
        if kind == "input":
            self.g.inputs.append(blob)
        self._bind_blob(t, blob, _version(tensor))
        return blob

    def _source_for(self, t, slot, ev):
        """Classify a tensor no recorded op produced."""
        tid = t.key
        name = self.rec.param_names.get(tid)
        if name is not None:
            return self._new_source(t, "param", name)
        key = t.alias_key()
        blob = self._alias(key, ev.index) if key is not None else None
        if blob is not None:
            self._bind_blob(t, blob, _version(t.tensor) if t.tensor is not None else None)
            return blob
        explicit = self.explicit_inputs is not None
        path = self.outer_args.get(tid) or (self.outer_args.get(key) if key is not None else None)
        if slot in opslib.WEIGHT_SLOTS or isinstance(t.tensor, torch.nn.Parameter):
            return self._new_source(t, "param", path or f"{ev_label(ev)}.{slot or 'param'}")
        if path is not None and not explicit:
            return self._new_source(t, "input", path)
        if self.escapes:
            op, src = self.escapes[-1]
            raise CaptureError(
                f"{describe(ev)} reads a tensor that no recorded op produced and that is not a parameter, "
                f"buffer or input; it probably comes from `{op}` at {src}, which took data out of torch. "
                f"A static graph cannot follow that.")
        if ev.outer and not explicit:  # `y = torch.relu(x)` written in the block itself: x is an input
            return self._new_source(t, "input", self.rec.block_names.get(tid) or f"input{len(self.g.inputs)}")
        # read inside model code but never passed in: a closure, global or default-argument tensor
        blob = self._new_source(t, "const", f"{ev_label(ev)}.{slot or 'const'}")
        self.g.warnings.append(f"{describe(ev)} reads a tensor that was not passed in as an input; it is "
                               f"treated as a constant ({blob.name}, shape {list(t.shape)})")
        return blob

    def _written_by_name(self, ev, op, inplace_name, params):
        """Inference tensors have no version counter: fall back to what the call's name says
        (``relu_``, ``__iadd__``, ``inplace=True``, ``setitem``, ``out=``)."""
        if not self.inference_warned:
            self.inference_warned = True
            self.g.warnings.append("captured under torch.inference_mode(): tensors carry no version counter, so "
                                   "in-place writes are recognised by name only and writes through views cannot "
                                   "be detected; prefer torch.no_grad()")
        return _named_writes(ev, op, inplace_name, params)

    def _known_constant(self, t):
        blob = self.current.get(t.key)
        return blob.is_constant if blob is not None else t.key in self.rec.param_names

    # ---- events ---------------------------------------------------------------------------
    def _add_event(self, ev):
        """One recorded call -> nothing (metadata, pass-through), a constant, an alias, or a Node."""
        raw = opslib.raw_name(ev.func)
        op, swap, inplace_name = opslib.canonical_name(ev.func)
        if not ev.outputs and raw in opslib.METADATA:
            return
        try:
            params = opslib.bind(op, ev.args, ev.kwargs)
        except opslib.BindError as exc:
            raise CaptureError(f"{describe(ev)}: cannot read its arguments ({exc})") from None
        if None in ev.in_versions:
            written = self._written_by_name(ev, op, inplace_name, params)
        else:
            written = [i for i, (a, b) in enumerate(zip(ev.in_versions, ev.after_versions)) if a != b]
            if len(written) > 1:  # views of one tensor share a version counter: ``a.add_(b)`` bumps b too
                written = [i for i in written if i in _named_writes(ev, op, inplace_name, params)] or written
        if not ev.outputs and not written:
            if raw in opslib.ESCAPES and any(not self._known_constant(t) for t in ev.inputs):
                self.escapes.append((raw, ev.source))
            return

        bottoms = self._bottoms(ev, params)
        lookup = {t.key: self.current[t.key] for t in ev.inputs}
        params = opslib.normalize(op, swap, _sub(params, lookup),
                                  input_ndim=len(ev.inputs[0].shape) if ev.inputs else None)
        constant = all(b.is_constant for b in (_value_operands(op, params, bottoms) if op in opslib.SHAPE_ONLY_ARGS
                                                else bottoms))
        if op in opslib.ALIAS_OPS and not written and len(ev.outputs) == 1 and ev.outputs[0].key not in self.current:
            # x.data / x.detach(): the same values under another tensor object - one blob for both,
            # so a later in-place write through either is seen by readers of the other
            self._bind_blob(ev.outputs[0], lookup[ev.inputs[0].key], ev.out_info[0][2])
            return
        fills = _fill_values(op, params, ev) if constant else None
        tops = self._tops(ev, written, constant, fills)
        real_tops = [t for t in tops if t is not None]
        if not real_tops:
            return  # a pure pass-through: nothing new to record
        if constant:
            for b in real_tops:
                b.meta["source"] = ev.source
                b.meta["label"] = ev_label(ev)
                if self.escapes:
                    b.meta["after_escape"] = self.escapes[-1]
            self._follow_views(ev, written)
            return
        self._refuse_escaped_constants(ev, bottoms)
        meta = {"scope": ev.scope, "module": ev.module, "call": ev.call, "source": ev.source, "raw_op": raw,
                "inplace": bool(written) or inplace_name or bool(params.get("inplace")),
                "shapes_in": [tuple(b.shape or ()) for b in bottoms],
                "passthrough_outputs": [k for k, t in enumerate(tops) if t is None]}
        self.g.create_node(ev_label(ev), op, params, target=ev.func,
                           args=_sub(ev.args, lookup), kwargs=_sub(ev.kwargs, lookup),
                           tops=real_tops, meta=meta)
        self._follow_views(ev, written)

    def _bottoms(self, ev, params):
        """The blobs an event reads, classifying tensors seen for the first time; refuses stale reads."""
        bottoms = []
        for t, now in zip(ev.inputs, ev.in_versions):
            blob = self.current.get(t.key)
            if self.unfollowable and t.key in self.unfollowable:
                raise CaptureError(f"{describe(ev)} reads `{blob.name}`, which {self.unfollowable[t.key]}")
            if blob is None:
                blob = self._source_for(t, _slot_of(params, t), ev)
            else:
                seen = self.version.get(t.key)
                if (seen is not None and now is not None and now != seen and not blob.is_constant
                        and not self._explained_by_set(t, now - seen)):
                    raise CaptureError(
                        f"{describe(ev)} reads `{blob.name}` after it was modified in place by code tracecap could "
                        f"not follow (typically a write through a view, like `x[:, :2] += 1` or "
                        f"`x.view(-1).relu_()`, or a write outside torch). A static graph cannot express that; "
                        f"write the result to a new tensor instead.")
            if blob not in bottoms:
                bottoms.append(blob)
        return bottoms

    def _tops(self, ev, written, constant, fills=None):
        """New blobs (or versions) for what an event returned or wrote; None marks a returned input."""
        tops, out_ids = [], set()
        written_ids = {ev.inputs[i].key for i in written}
        for k, (t, (shape, dtype, ver)) in enumerate(zip(ev.outputs, ev.out_info)):
            out_ids.add(t.key)
            old = self.current.get(t.key)
            if old is not None and t.key not in written_ids:
                if old not in tops:
                    tops.append(None)  # returned an input unchanged (contiguous, eval dropout ...)
                continue
            if constant and ev.outer and old is None and t.key in self.outer_args and self.explicit_inputs is None:
                # made at block level and handed to a call, e.g. model(torch.randn(1, 3, 224, 224)): an input
                self._new_source(t, "input", self.outer_args[t.key])
                continue
            value = fills[k] if fills is not None else (ev.values[k] if ev.values is not None else
                                                         self._value(t, ev) if constant else None)
            tops.append(self._write(old, t, shape, dtype, value, constant, ver, ev))
        for i in written:  # written in place but not returned (setitem, out=, copy_ ...)
            t = ev.inputs[i]
            if t.key not in out_ids:
                tops.append(self._write(self.current[t.key], t, tuple(t.shape), t.dtype,
                                        self._value(t, ev) if constant else None, constant,
                                        ev.after_versions[i], ev))
        return tops

    # ---- writes through views and rebinding ---------------------------------------------
    def _explained_by_set(self, t, bumps):
        """Did ``set_()`` on views of t's base cause t's unexplained version bumps? ``x1.set_()`` (RevNet
        code frees memory so) rebinds x1 only and writes nothing, but bumps the version counter it shares
        with its base and the other views, and torch does not surface it as an op. Each such view is
        now of another shape than recorded; at least ``bumps`` of them must be, or the bump is a write."""
        root = self._base(t) or t
        rebound = sum(1 for tid, u in self.bound.items()
                      if u is not t and (u is root or self._base(u) is root) and tid in self.current
                      and self.current[tid].shape is not None and tuple(u.shape) != self.current[tid].shape)
        return rebound >= bumps

    def _follow_views(self, ev, written):
        """After ``ev`` wrote tensors in place, give every other tensor on the same storage the value it
        now has: a disjoint view keeps its blob, a view inside the write is a slice of the new value,
        a tensor containing the write gets it through ``setitem`` (``x[:, :c] = x1``)."""
        for i in written:
            w = ev.inputs[i]
            peers = self.sharing.get((self._base(w) or w).key, {})
            lay_w = views.layout(w.tensor) if len(peers) > 1 else None
            if lay_w is not None:
                self._update_peers(ev, w, lay_w, [t for tid, t in peers.items() if tid != w.key])

    def _update_peers(self, ev, w, lay_w, peers):
        new_w = self.current[w.key]
        pending = []
        for t in peers:
            blob = self.current.get(t.key)
            lay = views.layout(t.tensor)
            if blob is None or blob is new_w or lay is None or lay.storage != lay_w.storage:
                continue
            if blob.is_constant and new_w.is_constant:
                continue  # constants written by constants stay what they were (no graph to follow)
            if not views.overlaps(lay, lay_w):
                self.version[t.key] = None  # its version counter moved with the write; its values did not
                continue
            pending.append((t, lay))
        updated = [(lay_w, new_w)]
        while pending:
            made = None
            for k, (t, lay) in enumerate(pending):
                made = self._derive_peer(ev, t, lay, updated, lay_w)
                if made is not None:
                    updated.append((lay, made))
                    del pending[k]
                    break
            if made is None:
                break
        for t, lay in pending:
            self.version[t.key] = None
            self.unfollowable[t.key] = (f"was changed by {describe(ev)} through a view that is no slice of it "
                                        f"(a transposed or overlapping view); a static graph cannot express "
                                        f"that - write the result to a new tensor instead")

    def _derive_peer(self, ev, t, lay, updated, lay_w):
        old = self.current[t.key]
        if any(old is u for _, u in updated):
            return old  # an alias of a tensor already brought up to date
        for lay_u, new_u in updated:
            index = views.index_within(lay_u, lay)
            if index is not None:
                return self._derived(ev, t, old, "getitem", {"input": new_u, "index": index})
            if views.same_elements(lay_u, lay):
                return self._derived(ev, t, old, "reshape", {"input": new_u, "shape": lay.shape})
            index = views.index_within(lay, lay_u)
            if index is not None and views.covered_by(lay_w, lay_u, lay):
                return self._derived(ev, t, old, "setitem", {"input": old, "index": index, "value": new_u})
        return None

    def _derived(self, ev, t, old, op, params):
        """A new version of ``t`` computed by ``op`` (a node, or a constant when its inputs are)."""
        inputs = [b for b in params.values() if isinstance(b, Blob)]
        constant = all(b.is_constant for b in inputs)
        value = None
        if constant:
            from tracecap.ops.reference import IMPL
            value = IMPL[op]({k: v.value if isinstance(v, Blob) else v for k, v in params.items()}).clone()
        blob = self._version_blob(old, t, tuple(t.shape), t.dtype, value, constant, ev_label(ev))
        if not constant:
            meta = {"scope": ev.scope, "module": ev.module, "call": ev.call, "source": ev.source, "raw_op": op,
                    "inplace": False, "shapes_in": [tuple(b.shape or ()) for b in inputs],
                    "passthrough_outputs": [], "follows_write_of": opslib.raw_name(ev.func)}
            self.g.create_node(ev_label(ev), op, params, tops=[blob], meta=meta)
        self._bind_blob(t, blob, None)
        self._advance_aliases(old, blob, t)
        return blob

    def _write(self, old, t, shape, dtype, value, constant, version, ev):
        blob = self._version_blob(old, t, shape, dtype, value, constant, ev_label(ev))
        self._bind_blob(t, blob, version)
        self._advance_aliases(old, blob, t)
        return blob

    @staticmethod
    def _refuse_escaped_constants(ev, bottoms):
        for b in bottoms:
            if "after_escape" in b.meta:
                op, src = b.meta["after_escape"]
                raise CaptureError(
                    f"{describe(ev)} reads a tensor made at {b.meta['source']} after `{op}` at {src} took tensor "
                    f"data out of torch; tracecap cannot tell whether it depends on the input, so it refuses to "
                    f"freeze it as a constant. Keep the computation in torch ops.")

    def _advance_aliases(self, old, new, writer):
        """Other tensor objects bound to ``old`` (aliases) now read ``new`` too. Their own version
        counters may or may not have moved with the write, so they are no longer checked."""
        if old is None:
            return
        for tid in self.holders.get(id(old), ()):
            if tid != writer.key and self.current.get(tid) is old:
                self.current[tid] = new
                self.version[tid] = None
                self.holders[id(new)].append(tid)

    def _version_blob(self, old, t, shape, dtype, value, constant, label):
        kind = "const" if constant else "activation"
        value, quant = (value if constant else None), t.quant
        if old is None:
            return self.g.add_blob(label, kind, shape, dtype, value=value, quant=quant)
        root = old.meta.get("root", old)
        count = root.meta.get("versions", 0) + 1
        root.meta["versions"] = count
        blob = self.g.add_blob(f"{root.name}@{count}", kind, shape, dtype, value=value, quant=quant)
        blob.meta["root"] = root
        blob.meta["version"] = count
        return blob

    # ---- outputs and checks ---------------------------------------------------------------
    def _set_outputs(self):
        if self.explicit_outputs is not None:
            found = _flat_with_paths("", self.explicit_outputs, [])
            for path, t in found:
                ref = self.rec.seen(t)
                self._check_followed(ref, f"output {path or 0!r}")
                blob = (self.current.get(ref.key) if ref is not None else None) or self._alias(alias_key(t))
                if blob is None:
                    raise CaptureError(f"output {path or 0!r} (shape {list(t.shape)}) was not produced by any "
                                       f"recorded op in the capture block")
                self.g.outputs.append(blob)
            return
        done = [c for c in self.rec.outer_calls if c.done]
        for call in done:
            for _, t in _flat_with_paths("", call.result, []):
                ref = self.rec.seen(t)
                if ref is None:
                    continue  # no op read or made it
                self._check_followed(ref, f"the result of `{call.frame_name}(...)`")
                blob = self.current.get(ref.key)
                if blob is not None and not blob.users and not blob.is_constant and blob not in self.g.outputs:
                    self.g.outputs.append(blob)
        if not self.g.outputs and done and not any(_flat_with_paths("", c.result, []) for c in done):
            last = done[-1]
            where = next((ev.source for ev in reversed(self.rec.events)), "?")
            raise CaptureError(
                f"the call `{last.frame_name}(...)` made in the capture block returned "
                f"{type(last.result).__name__}, not a tensor (last op at {where}); graph outputs must be tensors. "
                f"Return tensors, or name them with cap.build(outputs=...).")
        if not self.g.outputs:  # fallback: produced activations nothing consumed
            self.g.outputs = [b for n in self.g.nodes for b in n.tops if not b.users]
        if not self.g.outputs:
            raise CaptureError("the capture recorded no op that computes a tensor from an input (was the block "
                               "empty, or were all tensors made inside it from constants?). Pass tensors created "
                               "before the block, or name them with cap.build(inputs=..., outputs=...).")

    def _check_followed(self, t, what):
        if t is not None and t.key in self.unfollowable:
            raise CaptureError(f"{what} {self.unfollowable[t.key]}")

    def _check_inputs(self):
        if not self.g.inputs and self.g.nodes:
            first = self.g.nodes[0]
            raise CaptureError(
                f"no graph input found: no recorded op read a tensor passed to a call in the capture block "
                f"(first op: {first.where()}). Call the model directly inside `with capture():`, "
                f"or pass the input tensors with cap.build(inputs=...).")


def _named_writes(ev, op, inplace_name, params):
    """The inputs an op writes by what its call says (``relu_``, ``__iadd__``, ``inplace=True``, ``out=``)."""
    if "out" in ev.kwargs:
        return [i for i, t in enumerate(ev.inputs) if t is ev.kwargs["out"]]
    if inplace_name or params.get("inplace") is True or op == "setitem":
        return [0] if ev.inputs else []
    return []


def _value_operands(op, params, bottoms):
    """The blobs whose values ``op`` reads (``SHAPE_ONLY_ARGS`` names those read for shape/dtype only)."""
    names = opslib.SHAPE_ONLY_ARGS.get(op)
    if not names:
        return bottoms
    shape_only = {id(params.get(n)) for n in names if isinstance(params.get(n), Blob)}
    return [b for b in bottoms if id(b) not in shape_only]


def _fill_values(op, params, ev):
    """Fresh values of a fill (``zeros_like``, ``x.fill_(1)``): the tensor itself may be written later."""
    fill = opslib.FILLS.get(op)
    if isinstance(fill, str):
        fill = params.get(fill)
        if isinstance(fill, Blob):
            fill = fill.value.item() if fill.value is not None and fill.value.numel() == 1 else None
    if fill is None or not ev.outputs:
        return None
    return [torch.full(tuple(shape), fill, dtype=dtype) for shape, dtype, _ in ev.out_info]


def ev_label(ev):
    op = opslib.canonical_name(ev.func)[0]
    return f"{ev.scope}.{op}" if ev.scope else op


def describe(ev):
    op = opslib.raw_name(ev.func)
    scope = ev.scope or "<top level>"
    mod = f" ({ev.module})" if ev.module else ""
    return f"op `{op}` in module `{scope}`{mod} at {ev.source}"


def build_graph(recorder, inputs=None, outputs=None):
    return Builder(recorder, inputs, outputs).build()


__all__ = ["build_graph", "Blob"]
