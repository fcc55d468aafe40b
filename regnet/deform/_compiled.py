"""The Numba kernels of :mod:`regnet.deform.kernels`, at module level so that Numba's on-disk cache
(``cache=True``) is hit by every fresh process (functions defined inside a function close over
dispatchers, whose pickled form differs per process, and would be compiled again each time).
Imported only when a kernel is first needed: importing Numba costs ~0.3 s."""
import math

import numpy as np
from numba import njit, prange

CHUNK = 512  # columns per task of the row-vectorised recursion


@njit(parallel=True, cache=True)
def filter_middle(c, pole, horizon):
    """ITK's cubic B-spline decomposition along axis 1 of c (A, N, B), in place, mirror boundary.

    Rows of B values are updated together (contiguous, vectorised); tasks are (a, chunk of B)."""
    n_a, n, n_b = c.shape
    chunks = (n_b + CHUNK - 1) // CHUNK
    gain = (1.0 - pole) * (1.0 - 1.0 / pole)
    for task in prange(n_a * chunks):
        a = task // chunks
        b0 = (task % chunks) * CHUNK
        b1 = min(n_b, b0 + CHUNK)
        for k in range(n):
            for b in range(b0, b1):
                c[a, k, b] *= gain
        # causal initialisation
        if horizon < n:
            for b in range(b0, b1):
                zn = pole
                s = c[a, 0, b] * 1.0
                for k in range(1, horizon):
                    s += zn * c[a, k, b]
                    zn *= pole
                c[a, 0, b] = s
        else:
            for b in range(b0, b1):
                zn = pole
                iz = 1.0 / pole
                z2n = pole ** (n - 1)
                s = c[a, 0, b] + z2n * c[a, n - 1, b]
                z2n *= z2n * iz
                for k in range(1, n - 1):
                    s += (zn + z2n) * c[a, k, b]
                    zn *= pole
                    z2n *= iz
                c[a, 0, b] = s / (1.0 - zn * zn)
        for k in range(1, n):
            for b in range(b0, b1):
                c[a, k, b] += pole * c[a, k - 1, b]
        for b in range(b0, b1):
            c[a, n - 1, b] = (pole / (pole * pole - 1.0)) * (pole * c[a, n - 2, b] + c[a, n - 1, b])
        for k in range(n - 2, -1, -1):
            for b in range(b0, b1):
                c[a, k, b] = pole * (c[a, k + 1, b] - c[a, k, b])

@njit(inline="always")
def mirror(k, n):
    """ITK's mirror boundary for a tap index (one fold suffices: taps lie within 2 of the data)."""
    if k < 0:
        k = -k
    if k > n - 1:
        k = 2 * (n - 1) - k
    return min(max(k, 0), n - 1)  # only for images of 1 or 2 voxels along an axis


@njit(inline="always", fastmath=True)
def row(coef, z, y, x0, x1, x2, x3, w0, w1, w2, w3):
    return w0 * coef[z, y, x0] + w1 * coef[z, y, x1] + w2 * coef[z, y, x2] + w3 * coef[z, y, x3]


@njit(inline="always", fastmath=True)
def plane(coef, z, y0, y1, y2, y3, x0, x1, x2, x3, wx0, wx1, wx2, wx3, wy0, wy1, wy2, wy3):
    return (wy0 * row(coef, z, y0, x0, x1, x2, x3, wx0, wx1, wx2, wx3)
            + wy1 * row(coef, z, y1, x0, x1, x2, x3, wx0, wx1, wx2, wx3)
            + wy2 * row(coef, z, y2, x0, x1, x2, x3, wx0, wx1, wx2, wx3)
            + wy3 * row(coef, z, y3, x0, x1, x2, x3, wx0, wx1, wx2, wx3))


@njit(inline="always")
def cubic_weights(t):
    """The four cubic B-spline weights at fraction t in [0, 1) of the cell (taps floor-1 .. floor+2)."""
    s = 1.0 - t
    t2 = t * t
    t3 = t2 * t
    return (np.float32(s * s * s / 6.0), np.float32((4.0 - 6.0 * t2 + 3.0 * t3) / 6.0),
            np.float32((1.0 + 3.0 * (t + t2 - t3)) / 6.0), np.float32(t3 / 6.0))


@njit(parallel=True, cache=True, fastmath=True)
def warp_cubic(coef, field, a, b, m, default, out):
    """out[z, y, x] = spline(coef)(A i + b + M u(i)), i = (x, y, z); default outside [-0.5, N - 0.5).
    Four weights per axis per voxel (float32, as the coefficients: ~1e-4 HU), 64 taps; mirrored taps only
    near the border. fastmath: the sums may be reordered (vectorised); a NaN field is not supported."""
    nz, ny, nx = coef.shape
    oz, oy, ox = out.shape
    for zz in prange(oz):
        z = np.int64(zz)
        for y in range(oy):
            bx = a[0, 1] * y + a[0, 2] * z + b[0]
            by = a[1, 1] * y + a[1, 2] * z + b[1]
            bz = a[2, 1] * y + a[2, 2] * z + b[2]
            for x in range(ox):
                ux = np.float64(field[z, y, x, 0])
                uy = np.float64(field[z, y, x, 1])
                uz = np.float64(field[z, y, x, 2])
                cx = a[0, 0] * x + bx + m[0, 0] * ux + m[0, 1] * uy + m[0, 2] * uz
                cy = a[1, 0] * x + by + m[1, 0] * ux + m[1, 1] * uy + m[1, 2] * uz
                cz = a[2, 0] * x + bz + m[2, 0] * ux + m[2, 1] * uy + m[2, 2] * uz
                if not (-0.5 <= cx < nx - 0.5 and -0.5 <= cy < ny - 0.5 and -0.5 <= cz < nz - 0.5):
                    out[z, y, x] = default
                else:
                    fx = math.floor(cx)
                    fy = math.floor(cy)
                    fz = math.floor(cz)
                    wx0, wx1, wx2, wx3 = cubic_weights(cx - fx)
                    wy0, wy1, wy2, wy3 = cubic_weights(cy - fy)
                    wz0, wz1, wz2, wz3 = cubic_weights(cz - fz)
                    x0 = int(fx) - 1
                    y0 = int(fy) - 1
                    z0 = int(fz) - 1
                    if x0 >= 0 and y0 >= 0 and z0 >= 0 and x0 + 3 < nx and y0 + 3 < ny and z0 + 3 < nz:
                        x1, x2, x3, y1, y2, y3, z1, z2, z3 = x0 + 1, x0 + 2, x0 + 3, y0 + 1, y0 + 2, y0 + 3, \
                            z0 + 1, z0 + 2, z0 + 3
                    else:
                        x1, x2, x3 = mirror(x0 + 1, nx), mirror(x0 + 2, nx), mirror(x0 + 3, nx)
                        y1, y2, y3 = mirror(y0 + 1, ny), mirror(y0 + 2, ny), mirror(y0 + 3, ny)
                        z1, z2, z3 = mirror(z0 + 1, nz), mirror(z0 + 2, nz), mirror(z0 + 3, nz)
                        x0, y0, z0 = mirror(x0, nx), mirror(y0, ny), mirror(z0, nz)
                    out[z, y, x] = (
                        wz0 * plane(coef, z0, y0, y1, y2, y3, x0, x1, x2, x3, wx0, wx1, wx2, wx3, wy0, wy1, wy2, wy3)
                        + wz1 * plane(coef, z1, y0, y1, y2, y3, x0, x1, x2, x3, wx0, wx1, wx2, wx3, wy0, wy1, wy2, wy3)
                        + wz2 * plane(coef, z2, y0, y1, y2, y3, x0, x1, x2, x3, wx0, wx1, wx2, wx3, wy0, wy1, wy2, wy3)
                        + wz3 * plane(coef, z3, y0, y1, y2, y3, x0, x1, x2, x3, wx0, wx1, wx2, wx3, wy0, wy1, wy2, wy3))


@njit(parallel=True, cache=True)
def warp_nearest(labels, field, a, b, m, out):
    """out[z, y, x] = labels at the nearest voxel of A i + b + M u(i) (half up); 0 outside."""
    nz, ny, nx = labels.shape
    oz, oy, ox = out.shape
    for z in prange(oz):
        for y in range(oy):
            for x in range(ox):
                ux = field[z, y, x, 0]
                uy = field[z, y, x, 1]
                uz = field[z, y, x, 2]
                cx = a[0, 0] * x + a[0, 1] * y + a[0, 2] * z + b[0] + m[0, 0] * ux + m[0, 1] * uy + m[0, 2] * uz
                cy = a[1, 0] * x + a[1, 1] * y + a[1, 2] * z + b[1] + m[1, 0] * ux + m[1, 1] * uy + m[1, 2] * uz
                cz = a[2, 0] * x + a[2, 1] * y + a[2, 2] * z + b[2] + m[2, 0] * ux + m[2, 1] * uy + m[2, 2] * uz
                if -0.5 <= cx < nx - 0.5 and -0.5 <= cy < ny - 0.5 and -0.5 <= cz < nz - 0.5:
                    out[z, y, x] = labels[int(math.floor(cz + 0.5)), int(math.floor(cy + 0.5)),
                                          int(math.floor(cx + 0.5))]
                else:
                    out[z, y, x] = 0

@njit(parallel=True, cache=True)
def jacobian(u, p, out):
    """det(I + G), G[c, k] = sum_j d u_c / d index_j * p[j, k] (p = d index / d mm); index
    differences central inside, one-sided at the ends (as np.gradient)."""
    nz, ny, nx = out.shape
    for zz in prange(nz):
        z = np.int64(zz)  # a signed index: NumPy-style unification of uint64 and int64 is float64
        g = np.empty((3, 3))
        d = np.empty((3, 3))
        z0, z1 = max(z - 1, 0), min(z + 1, nz - 1)
        for y in range(ny):
            y0, y1 = max(y - 1, 0), min(y + 1, ny - 1)
            for x in range(nx):
                x0, x1 = max(x - 1, 0), min(x + 1, nx - 1)
                for c in range(3):
                    d[c, 0] = (u[z, y, x1, c] - u[z, y, x0, c]) / (x1 - x0) if x1 > x0 else 0.0
                    d[c, 1] = (u[z, y1, x, c] - u[z, y0, x, c]) / (y1 - y0) if y1 > y0 else 0.0
                    d[c, 2] = (u[z1, y, x, c] - u[z0, y, x, c]) / (z1 - z0) if z1 > z0 else 0.0
                for c in range(3):
                    for k in range(3):
                        g[c, k] = d[c, 0] * p[0, k] + d[c, 1] * p[1, k] + d[c, 2] * p[2, k]
                    g[c, c] += 1.0
                out[z, y, x] = (g[0, 0] * (g[1, 1] * g[2, 2] - g[1, 2] * g[2, 1])
                                - g[0, 1] * (g[1, 0] * g[2, 2] - g[1, 2] * g[2, 0])
                                + g[0, 2] * (g[1, 0] * g[2, 1] - g[1, 1] * g[2, 0]))



@njit(parallel=True, cache=True)
def recursive_gaussian(c, n_coef, m_coef, d_coef, bn, bm):
    """Deriche's 4th-order recursive Gaussian (the coefficients of ITK's RecursiveGaussianImageFilter)
    along axis 2 of c (A, L, N, B), in place; the border value is taken to extend to infinity (ITK's
    boundary). Causal and anti-causal sums in float64, 64 lines (l, b) at a time, gathered into
    (N, 64) buffers so that the recursion runs along contiguous rows whatever the axis."""
    n_a, n_l, n, n_b = c.shape
    chunk = 64
    n_q = n_l * n_b
    chunks = (n_q + chunk - 1) // chunk
    n0, n1, n2, n3 = n_coef[0], n_coef[1], n_coef[2], n_coef[3]
    m1, m2, m3, m4 = m_coef[0], m_coef[1], m_coef[2], m_coef[3]
    d1, d2, d3, d4 = d_coef[0], d_coef[1], d_coef[2], d_coef[3]
    bn1, bn2, bn3, bn4 = bn[0], bn[1], bn[2], bn[3]
    bm1, bm2, bm3, bm4 = bm[0], bm[1], bm[2], bm[3]
    for task in prange(n_a * chunks):
        a = task // chunks
        q0 = (task % chunks) * chunk
        w = min(n_q, q0 + chunk) - q0
        d = np.empty((n, w))
        y = np.empty((n, w))
        z = np.empty((n, w))
        if n_l == 1:  # columns contiguous in memory: read row by row
            for i in range(n):
                for j in range(w):
                    d[i, j] = c[a, 0, i, q0 + j]
        else:  # lines contiguous (x): read line by line
            for j in range(w):
                line, b = (q0 + j) // n_b, (q0 + j) % n_b
                for i in range(n):
                    d[i, j] = c[a, line, i, b]
        for j in range(w):
            e = d[0, j]
            y[0, j] = (n0 + n1 + n2 + n3) * e - (bn1 + bn2 + bn3 + bn4) * e
            y[1, j] = n0 * d[1, j] + (n1 + n2 + n3) * e - (d1 * y[0, j] + (bn2 + bn3 + bn4) * e)
            y[2, j] = (n0 * d[2, j] + n1 * d[1, j] + (n2 + n3) * e
                       - (d1 * y[1, j] + d2 * y[0, j] + (bn3 + bn4) * e))
            y[3, j] = (n0 * d[3, j] + n1 * d[2, j] + n2 * d[1, j] + n3 * e
                       - (d1 * y[2, j] + d2 * y[1, j] + d3 * y[0, j] + bn4 * e))
        for i in range(4, n):
            for j in range(w):
                y[i, j] = (n0 * d[i, j] + n1 * d[i - 1, j] + n2 * d[i - 2, j] + n3 * d[i - 3, j]
                           - (d1 * y[i - 1, j] + d2 * y[i - 2, j] + d3 * y[i - 3, j] + d4 * y[i - 4, j]))
        k = n - 1
        for j in range(w):
            e = d[k, j]
            z[k, j] = (m1 + m2 + m3 + m4) * e - (bm1 + bm2 + bm3 + bm4) * e
            z[k - 1, j] = m1 * d[k, j] + (m2 + m3 + m4) * e - (d1 * z[k, j] + (bm2 + bm3 + bm4) * e)
            z[k - 2, j] = (m1 * d[k - 1, j] + m2 * d[k, j] + (m3 + m4) * e
                           - (d1 * z[k - 1, j] + d2 * z[k, j] + (bm3 + bm4) * e))
            z[k - 3, j] = (m1 * d[k - 2, j] + m2 * d[k - 1, j] + m3 * d[k, j] + m4 * e
                           - (d1 * z[k - 2, j] + d2 * z[k - 1, j] + d3 * z[k, j] + bm4 * e))
        for i in range(n - 4, 0, -1):
            for j in range(w):
                z[i - 1, j] = (m1 * d[i, j] + m2 * d[i + 1, j] + m3 * d[i + 2, j] + m4 * d[i + 3, j]
                               - (d1 * z[i, j] + d2 * z[i + 1, j] + d3 * z[i + 2, j] + d4 * z[i + 3, j]))
        if n_l == 1:
            for i in range(n):
                for j in range(w):
                    c[a, 0, i, q0 + j] = y[i, j] + z[i, j]
        else:
            for j in range(w):
                line, b = (q0 + j) // n_b, (q0 + j) % n_b
                for i in range(n):
                    c[a, line, i, b] = y[i, j] + z[i, j]


@njit(parallel=True, cache=True)
def bspline_dense(coeffs, fx, wx, fy, wy, fz, wz, out):
    """out[z, y, x, c] = sum of the 4x4x4 cubic weights times coeffs[c, fz+k, fy+j, fx+i]: the
    tensor-product B-spline, reduced one axis at a time (z, then y, then x) in float64. The
    reduced plane and line keep the component last, so the per-voxel x pass reads 12 neighbouring
    values and writes 3 (1.7x faster than component-first)."""
    n_c, n_kz, n_ky, n_kx = coeffs.shape
    nz, ny, nx = out.shape[:3]
    for zz in prange(nz):
        z = np.int64(zz)
        plane = np.zeros((n_ky, n_kx, n_c))
        for k in range(4):
            w = wz[z, k]
            for c in range(n_c):
                for j in range(n_ky):
                    for i in range(n_kx):
                        plane[j, i, c] += w * coeffs[c, fz[z] + k, j, i]
        line = np.empty((n_kx, n_c))
        for y in range(ny):
            f = fy[y]
            a0, a1, a2, a3 = wy[y, 0], wy[y, 1], wy[y, 2], wy[y, 3]
            for i in range(n_kx):
                for c in range(n_c):
                    line[i, c] = (a0 * plane[f, i, c] + a1 * plane[f + 1, i, c]
                                  + a2 * plane[f + 2, i, c] + a3 * plane[f + 3, i, c])
            for x in range(nx):
                f = fx[x]
                b0, b1, b2, b3 = wx[x, 0], wx[x, 1], wx[x, 2], wx[x, 3]
                for c in range(n_c):
                    out[z, y, x, c] = (b0 * line[f, c] + b1 * line[f + 1, c]
                                       + b2 * line[f + 2, c] + b3 * line[f + 3, c])


@njit(inline="always")
def clamp(i, n):
    return min(max(i, 0), n - 1)


@njit(parallel=True, cache=True)
def canny_second_derivative(g, out):
    """ITK Canny's first pass: the second derivative along the gradient, (sum_ij g_i g_j g_ij) /
    (1e-4 + |grad g|^2), central differences with a zero-flux border, in ITK's float32 / float64 mix."""
    nz, ny, nx = g.shape
    half = np.float32(0.5)
    two = np.float32(2.0)
    for zz in prange(nz):
        z = np.int64(zz)
        zm, zp = clamp(z - 1, nz), clamp(z + 1, nz)
        for y in range(ny):
            ym, yp = clamp(y - 1, ny), clamp(y + 1, ny)
            for x in range(nx):
                xm, xp = clamp(x - 1, nx), clamp(x + 1, nx)
                c = g[z, y, x]
                # index axes x, y, z as ITK's dimensions 0, 1, 2
                dx0 = half * g[z, y, xp] - half * g[z, y, xm]
                dx1 = half * g[z, yp, x] - half * g[z, ym, x]
                dx2 = half * g[zp, y, x] - half * g[zm, y, x]
                dxx0 = g[z, y, xm] - two * c + g[z, y, xp]
                dxx1 = g[z, ym, x] - two * c + g[z, yp, x]
                dxx2 = g[zm, y, x] - two * c + g[zp, y, x]
                dxy01 = np.float32(0.25 * g[z, ym, xm] - 0.25 * g[z, yp, xm]
                                   - 0.25 * g[z, ym, xp] + 0.25 * g[z, yp, xp])
                dxy02 = np.float32(0.25 * g[zm, y, xm] - 0.25 * g[zp, y, xm]
                                   - 0.25 * g[zm, y, xp] + 0.25 * g[zp, y, xp])
                dxy12 = np.float32(0.25 * g[zm, ym, x] - 0.25 * g[zp, ym, x]
                                   - 0.25 * g[zm, yp, x] + 0.25 * g[zp, yp, x])
                deriv = np.float32(0.0)
                deriv = np.float32(deriv + 2.0 * dx0 * dx1 * dxy01)
                deriv = np.float32(deriv + 2.0 * dx0 * dx2 * dxy02)
                deriv = np.float32(deriv + 2.0 * dx1 * dx2 * dxy12)
                grad = np.float32(0.0001)
                deriv += dx0 * dx0 * dxx0
                grad += dx0 * dx0
                deriv += dx1 * dx1 * dxx1
                grad += dx1 * dx1
                deriv += dx2 * dx2 * dxx2
                grad += dx2 * dx2
                out[z, y, x] = deriv / grad


@njit(parallel=True, cache=True)
def canny_edge_strength(g, d2, out):
    """ITK Canny's second pass and zero crossings: |grad g| where the second derivative d2 crosses
    zero (ITK's ZeroCrossingImageFilter rule) and does not increase along the gradient, else 0."""
    nz, ny, nx = g.shape
    half = np.float32(0.5)
    zero = np.float32(0.0)
    for zz in prange(nz):
        z = np.int64(zz)
        zm, zp = clamp(z - 1, nz), clamp(z + 1, nz)
        for y in range(ny):
            ym, yp = clamp(y - 1, ny), clamp(y + 1, ny)
            for x in range(nx):
                xm, xp = clamp(x - 1, nx), clamp(x + 1, nx)
                this = d2[z, y, x]
                crossing = False
                for i in range(6):  # ITK's order: x-1, y-1, z-1, x+1, y+1, z+1
                    if i == 0:
                        that = d2[z, y, xm]
                    elif i == 1:
                        that = d2[z, ym, x]
                    elif i == 2:
                        that = d2[zm, y, x]
                    elif i == 3:
                        that = d2[z, y, xp]
                    elif i == 4:
                        that = d2[z, yp, x]
                    else:
                        that = d2[zp, y, x]
                    if ((this < zero and that > zero) or (this > zero and that < zero)
                            or (this == zero and that != zero) or (this != zero and that == zero)):
                        if abs(this) < abs(that) or (abs(this) == abs(that) and i >= 3):
                            crossing = True
                            break
                if not crossing:
                    out[z, y, x] = zero
                    continue
                gx = half * g[z, y, xp] - half * g[z, y, xm]
                gy = half * g[z, yp, x] - half * g[z, ym, x]
                gz = half * g[zp, y, x] - half * g[zm, y, x]
                grad = np.float32(0.0001)
                grad += gx * gx
                grad += gy * gy
                grad += gz * gz
                grad = np.float32(math.sqrt(np.float64(grad)))
                ex = half * d2[z, y, xp] - half * d2[z, y, xm]
                ey = half * d2[z, yp, x] - half * d2[z, ym, x]
                ez = half * d2[zp, y, x] - half * d2[zm, y, x]
                pos = zero
                pos += ex * (gx / grad)
                pos += ey * (gy / grad)
                pos += ez * (gz / grad)
                out[z, y, x] = grad if pos <= zero else zero


@njit(parallel=True, cache=True)
def field_statistics(u, jac, torso, planes):
    """Per z plane: max |u_k|, max |u|, sum of |u| in the torso, torso voxels, min J, max J, torso
    voxels with J <= 0 (planes: (nz, 7) float64). |u| in float32 as :func:`regnet.deform.field.magnitude`."""
    nz, ny, nx = jac.shape
    for zz in prange(nz):
        z = np.int64(zz)
        max_comp, max_mag, total, count, folded = 0.0, 0.0, 0.0, 0.0, 0.0
        j_min, j_max = np.inf, -np.inf
        for y in range(ny):
            for x in range(nx):
                a, b, c = u[z, y, x, 0], u[z, y, x, 1], u[z, y, x, 2]
                max_comp = max(max_comp, abs(a), abs(b), abs(c))
                m = np.sqrt(np.float32(a * a + b * b + c * c))
                max_mag = max(max_mag, m)
                j = jac[z, y, x]
                j_min = min(j_min, j)
                j_max = max(j_max, j)
                if torso[z, y, x]:
                    total += m
                    count += 1.0
                    if j <= 0:
                        folded += 1.0
        planes[z, 0], planes[z, 1], planes[z, 2], planes[z, 3] = max_comp, max_mag, total, count
        planes[z, 4], planes[z, 5], planes[z, 6] = j_min, j_max, folded
