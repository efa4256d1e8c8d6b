"""benchmarks/mutation_report.py: the diff reader and the equivalent families of the committed file."""

from pathlib import Path

from benchmarks.mutation_report import equivalent_class, load_equivalent, mutated_line

DIFF = """--- osscar/x.py
+++ osscar/x.py
@@ -1,4 +1,4 @@
 def f(a):
     b = 1
-    return torch.zeros(a, device=a.device)
+    return torch.zeros(a, )
"""


def test_mutated_line_is_the_first_changed_line_of_the_diff():
    assert mutated_line(DIFF) == (3, "    return torch.zeros(a, device=a.device)", "    return torch.zeros(a, )")


def test_the_committed_families_match_only_their_own_kind_of_mutant():
    _, classes = load_equivalent(Path("results/mutation_equivalent.toml"))

    def family(old, new):
        c = equivalent_class(old, new, classes)
        return c and c["name"]

    assert family("x = torch.zeros(n, device=A.device)", "x = torch.zeros(n, )") == "cpu-device"
    assert family("x = torch.zeros(n, device=A.device)", "x = torch.zeros(n + 1, device=A.device)") is None
    assert family('return {"stages": s}', 'return {"STAGES": s}') is None
    assert family("self._W_shared = False", "self._W_shared = None") == "ownership-flag"
    assert family("self._W_shared = self._W is problem.W_dense", "self._W_shared = self._W is not problem.W_dense") is None
    assert family("for i0 in range(0, len(rows), chunk):", "for i0 in range(0, len(rows), ):") == "slice-size"
    assert family("for i0 in range(0, H.shape[0], 64):", "for i0 in range(1, H.shape[0], 64):") is None
    assert family('d[~a] = float("inf")', 'd[~a] = float("INF")') == "inf-spelling"
    assert family("n = H.shape[0] // s", "n = H.shape[1] // s") == "square-matrix"
    assert family("n = W.shape[0] // s", "n = W.shape[1] // s") is None


def test_every_module_and_test_the_mutation_run_names_exists():
    """A pattern of ``only_mutate`` that matches no file silently drops that code from the run (it happened:
    ``osscar/allocation.py`` after allocation became a package), and a missing test file narrows the selection."""
    import tomllib

    root = Path(__file__).resolve().parent.parent
    config = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["mutmut"]
    unmatched = [p for p in config["only_mutate"] if not list(root.glob(p))]
    assert not unmatched, f"[tool.mutmut] only_mutate names no file: {unmatched}"
    tests = [t.split("::")[0] for t in config["pytest_add_cli_args_test_selection"]]
    assert not [t for t in tests if not (root / t).is_file()], "a test file of the selection is missing"
