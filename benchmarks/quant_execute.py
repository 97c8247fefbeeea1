"""Integer executor speed: ``tracecap.quant.execute`` on the test CNN vs PyTorch's quantized forward.

Target (issue 19): execute over 1,000 inputs within 10x of PyTorch's quantized forward on the same
batch. Both run in this process with the same thread count (default 1: the executor is numpy; its
BLAS and PyTorch both get ``--threads``); they alternate, medians are compared. The executor's
result is checked against PyTorch's codes once, so the timing is of a bit-exact run.
Usage: python benchmarks/quant_execute.py [--batch 1000] [--repeats 7] [--threads 1] [--engine fbgemm] [--spread 3]
"""
import argparse
import os
import statistics
import sys
import time
import warnings
from pathlib import Path


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--engine", default="fbgemm")
    ap.add_argument("--spread", type=float, default=3.0,
                    help="input std in units of the calibration std (3: a part saturates, as in the tests)")
    args = ap.parse_args()
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(args.threads)   # before numpy/torch load their pools
    import numpy as np
    import torch
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    import quant_models as M
    import tracecap.quant as Q

    warnings.simplefilter("ignore")
    torch.set_num_threads(args.threads)
    model = M.eager(M.CNN, args.engine, per_channel=True)
    graph = M.capture(model, M.SHAPES[M.CNN], args.engine)
    with M.engine(args.engine):
        program = Q.read_graph(graph)
        x = M.test_inputs(M.SHAPES[M.CNN], n=args.batch) * (args.spread / M.TEST_STD)
        xn = x.numpy()
        quant, dequant = model.quant, model.dequant
        model.quant = model.dequant = torch.nn.Identity()   # PyTorch's forward from quantized input to codes

        def pytorch():
            return model(quant(x)).int_repr()

        def ours():
            return Q.execute(program, xn, threads=args.threads)

        with torch.no_grad():
            assert np.array_equal(ours(), pytorch().numpy()), "executor and PyTorch disagree"
            times = {"pytorch": [], "execute": []}
            for _ in range(args.repeats):
                for name, fn in (("pytorch", pytorch), ("execute", ours)):
                    t0 = time.perf_counter()
                    fn()
                    times[name].append(time.perf_counter() - t0)
        model.quant, model.dequant = quant, dequant
    tp, te = statistics.median(times["pytorch"]), statistics.median(times["execute"])
    print(f"CNN {tuple(x.shape)}, inputs at {args.spread:g}x the calibration spread, engine {args.engine}, "
          f"{args.threads} thread(s), median of {args.repeats}:")
    print(f"  PyTorch quantized forward  {tp * 1e3:8.1f} ms")
    print(f"  tracecap.quant.execute     {te * 1e3:8.1f} ms   (bit-exact with it)")
    print(f"  ratio execute / PyTorch    {te / tp:8.2f}x   (target <= 10x)")


if __name__ == "__main__":
    main()
