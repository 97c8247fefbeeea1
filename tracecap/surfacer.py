"""The surfacer: a no-op TorchFunctionMode that makes every torch op a Python frame.

settrace sees Python frames only, and most torch ops (``torch.cat``, ``view``,
``+``, ``F.conv2d``) are implemented in C. Routing every op through this mode's
``__torch_function__`` gives each call one Python frame whose locals hold
``func``, ``args`` and ``kwargs`` and whose return value is the op's output; the
recorder watches exactly that frame. torch pops the mode while the handler runs,
so ops executed inside ``func`` are not surfaced again: only the outermost op of
each nest is seen. The handler must stay a plain pass-through - no re-entry.
"""
from torch.overrides import TorchFunctionMode


class Surfacer(TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        if kwargs is None:
            kwargs = {}
        return func(*args, **kwargs)


#: The code object the recorder recognises as "an op is being called".
OP_CODE = Surfacer.__torch_function__.__code__
