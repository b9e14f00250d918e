"""Keep the GPU matrix script runnable: a few cells on the CPU, and its RESULTS section."""

import pytest
import torch
from benchmarks.gpu_matrix import main, markers, run_matrix, section, write_section


def test_a_small_matrix_trains_and_resumes_bit_identically_on_cpu():
    cells = run_matrix(
        device="cpu",
        families=("sgd", "adamw"),
        precisions=("fp32", "fp16"),
        accumulations=(1, 2),
        width=16,
        steps=12,
        micro=16,
    )
    assert [(c.family, c.precision, c.accumulate) for c in cells] == [
        (f, p, a) for f in ("sgd", "adamw") for p in ("fp32", "fp16") for a in (1, 2)
    ]
    assert all(c.error is None for c in cells)
    assert all(c.resume_gap == 0.0 for c in cells)
    assert all(c.final_loss < c.start_loss for c in cells)
    assert all(c.scaler_skips <= c.skipped for c in cells)
    assert all(c.scaler_skips == 0 for c in cells if c.precision == "fp32")


def test_the_section_replaces_its_own_markers_only(tmp_path):
    results = tmp_path / "RESULTS.md"
    results.write_text("# Results\n\nkeep me\n")
    cells = run_matrix(
        device="cpu",
        families=("adamw",),
        precisions=("bf16",),
        accumulations=(1,),
        width=8,
        steps=4,
        micro=8,
        check_resume=False,
    )
    for _ in range(2):  # writing twice leaves one section
        write_section(results, section(cells, device="cpu", width=8, steps=4, micro=8), "cpu")
    text = results.read_text()
    start, end = markers("cpu")
    assert text.count(start) == 1 and text.count(end) == 1 and "keep me" in text
    assert "| adamw | bf16 | 1 |" in text


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal without a GPU")
def test_without_cuda_the_script_refuses_clearly(capsys, tmp_path):
    assert main(["--results", str(tmp_path / "R.md")]) == 2
    assert "no CUDA device" in capsys.readouterr().out
    assert not (tmp_path / "R.md").exists()
