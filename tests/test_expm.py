"""The matrix exponential and ZOH discretisation against independent references.

References: closed forms (diagonal, rotations, 2 x 2 triangular, chains of
integrators h^k / k!, D R D^-1), the exact exponentials of SciPy's "Burkardt"
test matrices (collected by John Burkardt from Moler and Van Loan, Ward, Laub
and the NAG library), mpmath at 40 digits, and scipy.linalg.expm.
"""
import math
import os
import signal
import subprocess
import sys
import textwrap
import time

import mpmath
import numpy as np
import pytest
import scipy.linalg

import trajloss
from trajloss import _core


def mp_expm(A):
    """exp(A) by mpmath at 40 significant digits, rounded to float64."""
    with mpmath.workdps(40):
        return np.array(mpmath.expm(mpmath.matrix(np.asarray(A).tolist())).tolist(), dtype=float)


def mp_exp(x):
    """exp of each entry of x, correctly rounded (mpmath at 40 digits)."""
    with mpmath.workdps(40):
        return np.array([float(mpmath.exp(float(v))) for v in np.ravel(x)]).reshape(np.shape(x))


def rel_err(E, ref):
    """max |E - ref| / max |ref| (normwise, the accuracy scaling and squaring guarantees)."""
    return np.max(np.abs(E - ref)) / np.max(np.abs(ref))


def entry_err(E, ref):
    """max over nonzero entries of |E - ref| / |ref| (entrywise)."""
    nz = ref != 0
    return np.max(np.abs(E[nz] - ref[nz]) / np.abs(ref[nz]))


# ---- SciPy's Burkardt test matrices with their known exponentials -------------

E1, E4, E16, E39 = math.exp(1), math.exp(4), math.exp(16), math.exp(39)
EPS = np.spacing(1.0)


def forsythe_power(n, p):
    """The n x n Forsythe matrix (ones above the diagonal, 1e-n in the corner) to the p."""
    a, b = divmod(p, n)
    large = 10.0 ** (-n * a)
    small = large * 10.0 ** (-n)
    return np.diag([large] * (n - b), b) + np.diag([small] * b, b - n)


def forsythe_expm(n):
    """Its exponential by the Taylor series: every term is entrywise nonnegative."""
    return sum(forsythe_power(n, p) / math.factorial(p) for p in range(n * max(1, -(-16 // n))))


BURKARDT = {
    "1 diagonal": ([[1, 0], [0, 2]], [[E1, 0], [0, math.exp(2)]]),
    "3 Laub": ([[0, 1], [-39, -40]],
               [[39 / (38 * E1) - 1 / (38 * E39), -math.expm1(-38) / (38 * E1)],
                [39 * math.expm1(-38) / (38 * E1), -1 / (38 * E1) + 39 / (38 * E39)]]),
    "4 Moler-Van Loan": ([[-49, 24], [-64, 31]],
                         np.array([[3, 1], [4, 2]]) * np.exp([-17.0, -1.0])
                         @ np.array([[1, -0.5], [-2, 1.5]])),
    "5 nilpotent": ([[0, 6, 0, 0], [0, 0, 6, 0], [0, 0, 0, 6], [0, 0, 0, 0]],
                    [[1, 6, 18, 36], [0, 1, 6, 18], [0, 0, 1, 6], [0, 0, 0, 1]]),
    "6 defective": ([[1, 1], [0, 1]], [[E1, E1], [0, E1]]),
    "7 near-defective": ([[1 + EPS, 1], [0, 1 - EPS]], [[E1, E1], [0, E1]]),
    "8 Wikipedia": ([[21, 17, 6], [-5, -1, -6], [4, 4, 16]],
                    np.array([[13 * E16 - E4, 13 * E16 - 5 * E4, 2 * E16 - 2 * E4],
                              [-9 * E16 + E4, -9 * E16 + 5 * E4, -2 * E16 + 2 * E4],
                              [16 * E16, 16 * E16, 4 * E16]]) / 4),
    "13 Forsythe n=2": (forsythe_power(2, 1), forsythe_expm(2)),
    "13 Forsythe n=3": (forsythe_power(3, 1), forsythe_expm(3)),
    "13 Forsythe n=4": (forsythe_power(4, 1), forsythe_expm(4)),
    "13 Forsythe n=10": (forsythe_power(10, 1), forsythe_expm(10)),
}

# Cases whose published exponential is a table of decimals (SciPy's test data);
# mpmath is the reference and the table is checked to its printed precision.
BURKARDT_TABLES = {
    "2 symmetric": ([[1, 3], [3, 2]],
                    [[39.322809708033859, 46.166301438885753],
                     [46.166301438885768, 54.711576854329110]], 1e-14),
    "9 NAG": ([[1, 2, 2, 2], [3, 1, 1, 2], [3, 2, 1, 2], [3, 3, 3, 1]],
              [[740.7038, 610.8500, 542.2743, 549.1753],
               [731.2510, 603.5524, 535.0884, 542.2743],
               [823.7630, 679.4257, 603.5524, 610.8500],
               [998.4355, 823.7630, 731.2510, 740.7038]], 1e-6),
    "10 Ward 1": ([[4, 2, 0], [1, 4, 1], [1, 1, 4]],
                  [[147.8666224463699, 183.7651386463682, 71.79703239999647],
                   [127.7810855231823, 183.7651386463682, 91.88256932318415],
                   [127.7810855231824, 163.6796017231806, 111.9681062463718]], 1e-14),
    "11 Ward 2": ([[29.87942128909879, 0.7815750847907159, -2.289519314033932],
                   [0.7815750847907159, 25.72656945571064, 8.680737820540137],
                   [-2.289519314033932, 8.680737820540137, 34.39400925519054]],
                  [[5.496313853692378e15, -1.823188097200898e16, -3.047577080858001e16],
                   [-1.823188097200899e16, 6.060522870222108e16, 1.012918429302482e17],
                   [-3.047577080858001e16, 1.012918429302482e17, 1.692944112408493e17]], 1e-14),
    "12 Ward 3": ([[-131, 19, 18], [-390, 56, 54], [-387, 57, 52]],
                  [[-1.509644158793135, 0.3678794391096522, 0.1353352811751005],
                   [-5.632570799891469, 1.471517758499875, 0.4060058435250609],
                   [-4.934938326088363, 1.103638317328798, 0.5413411267617766]], 1e-14),
    "14 Moler, badly scaled": ([[0, 1e-8, 0], [-(2e10 + 4e8 / 6.0), -3, 2e10],
                                [200 / 3.0, 0, -200 / 3.0]],
                               [[0.446849468283175, 1.54044157383952e-09, 0.462811453558774],
                                [-5743067.77947947, -0.0152830038686819, -4526542.71278401],
                                [0.447722977849494, 1.54270484519591e-09, 0.463480648837651]],
                               1e-13),
}
BURKARDT_TABLES["12 Ward 3"] = BURKARDT_TABLES["12 Ward 3"][:2] + (1e-11,)  # printed to ~1e-12



@pytest.mark.parametrize("name", sorted(BURKARDT))
def test_burkardt_exact(name):
    """Exponentials known in closed form, to 1e-13 relative to the largest entry."""
    A, want = (np.array(x, dtype=float) for x in BURKARDT[name])
    assert rel_err(_core.expm(A), want) <= 1e-13


@pytest.mark.parametrize("name", sorted(BURKARDT_TABLES))
def test_burkardt_tables(name):
    """Published decimals: mpmath agrees with the table to its printed precision, and
    expm agrees with mpmath to 1e-13 (badly scaled case 14: the old code was off by 0.85)."""
    A, table, digits = BURKARDT_TABLES[name]
    A, table = np.array(A, dtype=float), np.array(table, dtype=float)
    ref = mp_expm(A)
    assert entry_err(ref, table) <= digits
    assert rel_err(_core.expm(A), ref) <= 1e-13
    assert entry_err(_core.expm(A), ref) <= 1e-12


@pytest.mark.parametrize("s", [1e4, 1e8, 1e12, 1e16, 1e50, 1e150])
def test_diagonal_similarity(s):
    """exp(D A0 D^-1) = D exp(A0) D^-1 entrywise, D = diag(s, 1) (old: 1.8e-5 at 1e12,
    0.16 at 1e16). exp(A0) is the closed form of a 2 x 2 matrix with complex eigenvalues."""
    a, b, c, d = 0.3, -1.1, 0.7, -0.2
    A0 = np.array([[a, b], [c, d]])
    mu, w = (a + d) / 2, math.sqrt(-((a - d) ** 2 / 4 + b * c))  # eigenvalues mu +- i w
    E0 = math.exp(mu) * (math.cos(w) * np.eye(2) + math.sin(w) / w * (A0 - mu * np.eye(2)))
    D = np.diag([s, 1.0])
    A = D @ A0 @ np.diag([1 / s, 1.0])
    want = D @ E0 @ np.diag([1 / s, 1.0])
    assert entry_err(_core.expm(A), want) <= 1e-14
    # the same through the ZOH path, with the scaled pair as (A, B)
    Ad, _ = _core.discretize(A, np.array([[1.0], [1.0]]), 1.0)
    assert entry_err(Ad, want) <= 1e-14


@pytest.mark.parametrize("s", [1e8, 1e40, 1e120])
def test_graded_similarity(s):
    """A 5 x 5 random matrix graded by D = diag(s^(i/4)): exp(D A0 D^-1) = D exp(A0) D^-1
    entry by entry, exp(A0) from 40-digit mpmath (scipy.linalg.expm is off by 1.0 at 1e150
    in the 2 x 2 case above; the old code by ~1 from 1e16)."""
    A0 = np.random.default_rng(0).standard_normal((5, 5))
    d = s ** (np.arange(5) / 4)
    A = A0 * d[:, None] / d[None, :]
    want = mp_expm(A0) * d[:, None] / d[None, :]
    assert entry_err(_core.expm(A), want) <= 1e-12


def test_stiff_scalar_zoh():
    """from_continuous([[-1]], [[100]], 20): Ad = exp(-20) (old: 2.061007e-9, 7e-5 off),
    Bd = 100 (1 - exp(-20))."""
    sys_ = trajloss.LinearSystem.from_continuous([[-1.0]], [[100.0]], 20)
    assert abs(sys_.Ad[0, 0] - math.exp(-20)) <= 1e-15 * math.exp(-20)
    assert abs(sys_.Bd[0, 0] + 100 * math.expm1(-20)) <= 1e-15 * 100


@pytest.mark.parametrize("lam", [-50.0, -20.0, -1e-3, 0.0, 0.7, 30.0])
def test_scalar_and_diagonal(lam):
    """A diagonal matrix exponentiates entry by entry, within an ulp of the correctly
    rounded exp."""
    diag = np.array([lam, -lam / 3, 2.5, -7.0])
    E = _core.expm(np.diag(diag))
    want = mp_exp(diag)
    assert np.all(E[~np.eye(4, dtype=bool)] == 0.0)
    assert np.all(np.abs(np.diag(E) - want) <= np.spacing(want))
    assert abs(_core.expm([[lam]])[0, 0] - want[0]) <= np.spacing(want[0])


@pytest.mark.parametrize("n", [2, 3, 4, 5, 8, 12, 20])
@pytest.mark.parametrize("h", [0.1, 1 / 3, 5.0, 100.0, 1e3])
def test_integrator_chain(n, h):
    """exp(h N) for the n x n shift N is h^k / k! on the k-th superdiagonal: within an
    ulp or two (three beyond 9 states), and exactly zero below the diagonal."""
    N = np.diag(np.full(n - 1, h), 1)
    E = _core.expm(N)
    want = np.zeros((n, n))
    for k in range(n):
        want += np.diag(np.full(n - k, h ** k / math.factorial(k)), k)
    assert np.all(np.tril(E, -1) == 0.0)
    up = np.triu(np.ones((n, n), dtype=bool))
    ulps = np.abs(E[up] - want[up]) / np.spacing(want[up])
    assert ulps.max() <= (2 if n <= 9 else 3)


def test_chain_zoh():
    """ZOH of a chain of four integrators: Ad = exp(hN), Bd the next column h^k / k!."""
    n, h = 4, 0.37
    A, B = np.diag(np.ones(n - 1), 1), np.eye(n)[:, -1:]
    sys_ = trajloss.LinearSystem.from_continuous(A, B, h)
    full = np.array([[h ** (j - i) / math.factorial(j - i) if j >= i else 0.0
                      for j in range(n + 1)] for i in range(n)])
    assert np.all(np.tril(sys_.Ad, -1) == 0.0)
    np.testing.assert_array_max_ulp(sys_.Ad, full[:, :n], maxulp=2)
    np.testing.assert_array_max_ulp(sys_.Bd, full[:, n:], maxulp=2)


@pytest.mark.parametrize("dt", [5.0, 100.0, 1 / 3])
def test_double_integrator_exact(dt):
    """DoubleIntegrator Ad = [[1, dt], [0, 1]] exactly (old: Ad[1,0] = -1.4e-16 at dt = 5,
    -2.3e-15 at dt = 100), Bd = [[dt^2/2], [dt]]."""
    sys_ = trajloss.DoubleIntegrator(dt=dt)
    assert sys_.Ad[1, 0] == 0.0
    assert np.array_equal(sys_.Ad, [[1.0, dt], [0.0, 1.0]])
    assert np.array_equal(sys_.Bd, [[dt * dt / 2], [dt]])


@pytest.mark.parametrize("t", [1e-3, 0.3, 1.7, 6.0, 25.0, 100.0])
def test_rotation(t):
    """exp([[0, t], [-t, 0]]) = [[cos t, sin t], [-sin t, cos t]]."""
    want = np.array([[math.cos(t), math.sin(t)], [-math.sin(t), math.cos(t)]])
    assert np.max(np.abs(_core.expm([[0.0, t], [-t, 0.0]]) - want)) <= 4e-15 * max(1.0, t / 10)


@pytest.mark.parametrize("a,b,d", [(-1.25, 4.0, 0.5), (2.0, -3.0, 2.0), (-30.0, 1e3, 1.0),
                                   (1.0, 1.0, 1.0 + 1e-9)])
def test_triangular_2x2(a, b, d):
    """exp([[a, b], [0, d]]) = [[e^a, b (e^a - e^d) / (a - d)], [0, e^d]] (b e^a when a = d),
    and the lower triangular transpose likewise."""
    off = b * math.exp(a) if a == d else b * math.exp((a + d) / 2) * math.sinh((a - d) / 2) / ((a - d) / 2)
    want = np.array([[math.exp(a), off], [0.0, math.exp(d)]])
    E = _core.expm([[a, b], [0.0, d]])
    assert E[1, 0] == 0.0
    assert entry_err(E, want) <= 4e-16 * 4
    EL = _core.expm([[a, 0.0], [b, d]])
    assert EL[0, 1] == 0.0
    assert entry_err(EL, want.T) <= 4e-16 * 4


@pytest.mark.parametrize("seed", range(4))
def test_triangular_stays_triangular(seed):
    """Upper (and block upper) triangular input: exactly zero below the diagonal (block),
    and equal to mpmath's exponential to 1e-13."""
    rng = np.random.default_rng(seed)
    T = np.triu(rng.standard_normal((7, 7))) * 4
    E = _core.expm(T)
    assert np.all(np.tril(E, -1) == 0.0)
    assert rel_err(E, mp_expm(T)) <= 1e-13
    Bk = rng.standard_normal((6, 6)) * 2
    Bk[3:, :3] = 0.0  # 3 x 3 blocks
    EB = _core.expm(Bk)
    assert np.all(EB[3:, :3] == 0.0)
    assert rel_err(EB, mp_expm(Bk)) <= 1e-13


@pytest.mark.parametrize("seed", range(6))
def test_permuted_triangular(seed):
    """P^T T P with T upper triangular (entries of mixed scale): balancing's permutation
    finds the triangular form, so exp is exactly zero where exp(T) is, with exp(t_ii) on
    the diagonal, and matches mpmath to 1e-13."""
    rng = np.random.default_rng(seed)
    n = 6
    T = np.triu(rng.standard_normal((n, n))) * rng.choice([1.0, 100.0, 1e-3], (n, n))
    p = rng.permutation(n)
    E = _core.expm(T[np.ix_(p, p)])
    ET = np.empty_like(E)
    ET[np.ix_(p, p)] = E  # exp(P^T T P) = P^T exp(T) P
    assert np.all(np.tril(ET, -1) == 0.0)
    want = mp_exp(np.diag(T))
    assert np.all(np.abs(np.diag(ET) - want) <= np.spacing(want))  # exp(t_ii) within an ulp
    assert rel_err(ET, mp_expm(T)) <= 1e-13


@pytest.mark.parametrize("n,scale,seed", [(2, 3.0, 0), (5, 0.1, 1), (5, 3.0, 2), (8, 30.0, 3),
                                          (6, 40.0, 4)])
def test_random_vs_mpmath(n, scale, seed):
    """Random dense matrices against 40-digit mpmath, to 1e-13 normwise."""
    A = np.random.default_rng(seed).standard_normal((n, n)) * scale
    ref = mp_expm(A)
    assert rel_err(_core.expm(A), ref) <= 1e-13 * max(1.0, math.log10(scale + 1))


@pytest.mark.parametrize("n", [20, 64, 150])
def test_random_vs_scipy(n):
    """Larger random matrices (BLAS products from 48 on) against scipy.linalg.expm."""
    rng = np.random.default_rng(n)
    for scale in (0.05, 1.0, 10.0):
        A = rng.standard_normal((n, n)) * scale / math.sqrt(n) * 3
        assert rel_err(_core.expm(A), scipy.linalg.expm(A)) <= 1e-12


def test_zoh_large_vs_scipy():
    """ZOH of a 100-state system equals the blocks of scipy's exponential of [[A, B], [0, 0]] dt."""
    rng = np.random.default_rng(5)
    n, m, dt = 100, 3, 0.2
    A, B = rng.standard_normal((n, n)) / 5, rng.standard_normal((n, m))
    M = np.zeros((n + m, n + m))
    M[:n, :n], M[:n, n:] = A * dt, B * dt
    ref = scipy.linalg.expm(M)
    Ad, Bd = _core.discretize(A, B, dt)
    assert rel_err(Ad, ref[:n, :n]) <= 1e-12
    assert rel_err(Bd, ref[:n, n:]) <= 1e-12


def test_rk4_large_vs_numpy():
    """rk4 of a 100-state system (BLAS products) against its formula in NumPy:
    Ad = I + F S, Bd = dt S B, S = I + F/2 (I + F/3 (I + F/4)), F = dt A."""
    rng = np.random.default_rng(9)
    n, dt = 100, 0.3
    A, B = rng.standard_normal((n, n)) / 10, rng.standard_normal((n, 2))
    F, I = dt * A, np.eye(n)
    S = I + (F / 2) @ (I + (F / 3) @ (I + F / 4))
    Ad, Bd = _core.discretize(A, B, dt, "rk4")
    assert rel_err(Ad, I + F @ S) <= 1e-14
    assert rel_err(Bd, dt * S @ B) <= 1e-14


def test_bad_input_still_refused():
    """NaN and non-square input keep their clear errors."""
    with pytest.raises(ValueError, match="A"):
        _core.expm([[0.0, np.nan], [0.0, 0.0]])
    with pytest.raises(ValueError, match="A must be a square"):
        _core.expm(np.zeros((2, 3)))


# The child installs Python's own SIGINT handler: a process started by a
# non-interactive shell as a background job (CI runs parts of itself that way)
# inherits SIGINT ignored, and Python then raises no KeyboardInterrupt at all.
CHILD = textwrap.dedent("""
    import signal, sys, time
    signal.signal(signal.SIGINT, signal.default_int_handler)
    import numpy as np
    import trajloss
    n, method = int(sys.argv[1]), sys.argv[2]
    rng = np.random.default_rng(0)
    A, B = rng.standard_normal((n, n)) / np.sqrt(n), rng.standard_normal((n, 1))
    print("start", flush=True)
    t0 = time.monotonic()
    try:
        trajloss.LinearSystem.from_continuous(A, B, 0.5, method=method)
        print("finished %.3f" % (time.monotonic() - t0), flush=True)
    except KeyboardInterrupt:
        t1 = time.monotonic()
        # the interpreter is usable afterwards
        ok = np.allclose(trajloss.DoubleIntegrator(dt=2.0).Ad, [[1, 2], [0, 1]])
        print("interrupted %.3f %s" % (t1 - t0, ok), flush=True)
""")


@pytest.mark.parametrize("method", ["zoh", "rk4"])
def test_ctrl_c_interrupts_from_continuous(method):
    """SIGINT half a second into a long from_continuous (n = 2048) raises KeyboardInterrupt
    within a few seconds; the old code ran on for minutes (165 s) before seeing it."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [os.path.dirname(os.path.dirname(trajloss.__file__)), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.Popen([sys.executable, "-c", CHILD, "2048", method], stdout=subprocess.PIPE,
                            text=True, env=env)
    try:
        assert proc.stdout.readline().strip() == "start"
        time.sleep(0.5)
        sent = time.monotonic()
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
        latency = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert out.startswith("interrupted"), out
    assert out.split()[2] == "True", out
    assert latency < 10.0, latency
