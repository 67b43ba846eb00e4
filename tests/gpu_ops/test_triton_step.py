

def test_gpucheck_op_table_passes_in_the_interpreter() -> None:
    """The per-op half of ``python -m prover.gpucheck`` (docs/gpu.md), covering every TritonKernels method."""
    from gpu_ops.triton_backend import TritonKernels
    from prover import gpucheck

    results = gpucheck.run_ops(torch.device("cpu"))
    assert [r for r in results if not r.ok] == []
    public = {n for n, f in vars(TritonKernels).items() if not n.startswith("_") and callable(f)}
    assert {r.name.split("(")[0] for r in results} == public
