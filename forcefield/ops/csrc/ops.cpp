// The forcefield:: torch operators: schemas and CPU implementations.
//
// Every fused kernel of conv_kernel.c and grid_kernel.c is a dispatcher operator, so the same
// numbers are reached from Python eager code, torch.compile, torch.export / AOTInductor and a
// C++ program that only loads this library (libtorch, no Python).  Fake (meta) kernels and
// autograd formulas are registered from Python (forcefield/ops/__init__.py): tracing and
// training happen in Python, and a traced graph already holds the backward operators it needs.
//
// Threads: the work is split into node (or row) ranges with at::parallel_for.  Each output
// entry is written by exactly one kernel call, in an order fixed by the CSR edge order, so the
// results are bit-identical for any number of threads.
//
// Conventions of the convolution operators (see conv_kernel.c):
//   hg [N, C, n1, pp]; wn [E, C, n1] or None; r [E, C, >= n2]; sh [E, >= n2^2];
//   ysh [n2^2, pp]; g [N, C, pp]; the edge index is six int64 tensors: sender, receiver [E],
//   recv_ptr, send_ptr [N + 1] and recv_perm, send_perm [E] (CSR by receiver and by sender).
// Partials for r and sh are padded with zeros to the shape of r and sh (the first layer reads
// fewer degrees than it is given); partials not asked for are returned as empty tensors.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

extern "C" {
const char *gaunt_grid_isa(void);
#define FORCEFIELD_DECLARE(T, R)                                                              \
    int gaunt_conv_receivers_##T(const int64_t *, const R *, const R *, const int64_t *,      \
                                 const R *, const int64_t *, const R *, int64_t, const R *,   \
                                 const int64_t *, const int64_t *, const int64_t *, R *,      \
                                 int64_t, int64_t);                                           \
    int gaunt_conv_senders_##T(const int64_t *, const R *, const R *, const int64_t *,        \
                               const R *, const int64_t *, const R *, int64_t, const R *,     \
                               const R *, const int64_t *, const int64_t *, const int64_t *,  \
                               R *, R *, R *, R *, int64_t, int64_t);                         \
    int gaunt_conv_double_senders_##T(const int64_t *, const int64_t *, const R *, const R *, \
                                      const R *, const R *, const R *, const R *, const R *,  \
                                      const R *, const R *, const R *, const int64_t *,       \
                                      const int64_t *, const int64_t *, R *, R *, R *, R *,   \
                                      int64_t, int64_t);                                      \
    int gaunt_conv_double_receivers_##T(const int64_t *, const int64_t *, const R *,          \
                                        const R *, const R *, const R *, const R *,           \
                                        const R *, const R *, const R *, const R *,           \
                                        const int64_t *, const int64_t *, const int64_t *,    \
                                        R *, int64_t, int64_t);                               \
    int gaunt_powers_forward_##T(const int64_t *, const R *, const R *, const R *, const R *, \
                                 R *, int64_t, int64_t);                                      \
    int gaunt_powers_backward_##T(const int64_t *, const R *, const R *, const R *,           \
                                  const R *, const R *, R *, R *, int64_t, int64_t);          \
    int gaunt_powers_double_##T(const int64_t *, const R *, const R *, const R *, const R *,  \
                                const R *, const R *, const R *, R *, R *, R *, int64_t,      \
                                int64_t);                                                     \
    int gaunt_grid_##T(const int64_t *, const R *, const int64_t *, const R *,                \
                       const int64_t *, R *, int64_t, int64_t, const int32_t *, const R *,    \
                       const R *, const R *, const R *, const R *, const R *, const R *);
FORCEFIELD_DECLARE(f32, float)
FORCEFIELD_DECLARE(f64, double)
#undef FORCEFIELD_DECLARE
}

namespace {

constexpr int64_t kOpsVersion = 1;  // raise when a schema or a kernel's numbers change
constexpr int64_t kMaxDegree = 7;  // per operand of the convolution kernels (MAXL)
constexpr int64_t kMinEdgesPerThread = 256;
constexpr int64_t kMinPowerRowsPerThread = 2048;
constexpr int64_t kMinGridRowsPerThread = 1024;
constexpr int64_t kGridBlockRows = 32;

// The C kernels of one floating-point type.
template <typename R>
struct Kernels;

#define FORCEFIELD_KERNELS(R, T)                                               \
    template <>                                                                \
    struct Kernels<R> {                                                        \
        static constexpr auto receivers = gaunt_conv_receivers_##T;            \
        static constexpr auto senders = gaunt_conv_senders_##T;                \
        static constexpr auto double_senders = gaunt_conv_double_senders_##T;  \
        static constexpr auto double_receivers = gaunt_conv_double_receivers_##T; \
        static constexpr auto powers_forward = gaunt_powers_forward_##T;       \
        static constexpr auto powers_backward = gaunt_powers_backward_##T;     \
        static constexpr auto powers_double = gaunt_powers_double_##T;         \
        static constexpr auto grid = gaunt_grid_##T;                           \
    };
FORCEFIELD_KERNELS(float, f32)
FORCEFIELD_KERNELS(double, f64)
#undef FORCEFIELD_KERNELS

using Range = std::pair<int64_t, int64_t>;

// Runs kernel(begin, end) on every range, in parallel; one clear error for a failed call.
template <typename F>
void run_ranges(const std::vector<Range> &ranges, const char *op, F kernel) {
    std::vector<int> status(ranges.size(), 0);
    at::parallel_for(0, static_cast<int64_t>(ranges.size()), 1, [&](int64_t b, int64_t e) {
        for (int64_t i = b; i < e; ++i) status[i] = kernel(ranges[i].first, ranges[i].second);
    });
    for (int code : status) {
        TORCH_CHECK(code != 2, "forcefield::", op, ": the convolution kernels take degrees up to ",
                    kMaxDegree, " per operand");
        TORCH_CHECK(code == 0, "forcefield::", op, ": the kernel could not allocate its scratch "
                    "buffer (out of memory)");
    }
}

// Node ranges with about equal numbers of edges (ptr is a CSR pointer), one per thread.
std::vector<Range> node_ranges(const at::Tensor &ptr) {
    const int64_t num_nodes = ptr.size(0) - 1;
    const int64_t *p = ptr.data_ptr<int64_t>();
    const int64_t total = p[num_nodes];
    const int64_t workers = std::max<int64_t>(
        1, std::min<int64_t>({at::get_num_threads(), total / kMinEdgesPerThread, num_nodes}));
    std::vector<Range> ranges;
    int64_t start = 0;
    for (int64_t k = 1; k <= workers; ++k) {
        int64_t stop = num_nodes;
        if (k < workers) {
            const int64_t target = k * total / workers;
            stop = std::lower_bound(p, p + num_nodes + 1, target) - p;
        }
        if (stop > start) ranges.emplace_back(start, stop);
        start = std::max(start, stop);
    }
    if (ranges.empty()) ranges.emplace_back(0, num_nodes);
    return ranges;
}

// Equal ranges of `count` items, one per thread, each with at least `min_rows` rows.
std::vector<Range> even_ranges(int64_t count, int64_t rows_per_item, int64_t min_rows,
                               int64_t align = 1) {
    const int64_t workers = std::max<int64_t>(
        1, std::min<int64_t>({at::get_num_threads(), count * rows_per_item / min_rows, count}));
    int64_t step = (count + workers - 1) / workers;
    step = (step + align - 1) / align * align;
    std::vector<Range> ranges;
    for (int64_t start = 0; start < count; start += step)
        ranges.emplace_back(start, std::min(count, start + step));
    return ranges;
}

// The dtype of the operator's first tensor: float32 or float64, else one clear error.
at::ScalarType floating_dtype(const at::Tensor &x, const char *op) {
    const auto dtype = x.scalar_type();
    TORCH_CHECK(dtype == at::kFloat || dtype == at::kDouble, "forcefield::", op,
                ": float32 or float64 tensors expected, got ", dtype);
    return dtype;
}

void check_real(const at::Tensor &x, const char *op, const char *name, at::ScalarType dtype) {
    TORCH_CHECK(x.device().is_cpu(), "forcefield::", op, ": ", name, " must be a CPU tensor");
    TORCH_CHECK(x.scalar_type() == dtype, "forcefield::", op, ": ", name, " has dtype ",
                x.scalar_type(), ", expected ", dtype);
}

at::Tensor index_tensor(const at::Tensor &x, const char *op, const char *name) {
    TORCH_CHECK(x.device().is_cpu() && x.scalar_type() == at::kLong, "forcefield::", op, ": ",
                name, " must be an int64 CPU tensor");
    return x.contiguous();
}

// x with unit stride in its last dimension (other strides may be anything, 0 too).
at::Tensor rows(const at::Tensor &x) {
    return (x.stride(-1) == 1 || x.size(-1) == 1) ? x : x.contiguous();
}

std::array<int64_t, 2> strides2(const c10::optional<at::Tensor> &x) {
    if (!x.has_value()) return {0, 0};
    return {x->stride(0), x->stride(1)};
}

template <typename R>
const R *ptr_or_null(const c10::optional<at::Tensor> &x) {
    return x.has_value() ? x->data_ptr<R>() : nullptr;
}

template <typename R>
R *out_or_null(at::Tensor &x, bool wanted) {
    return wanted ? x.data_ptr<R>() : nullptr;
}

at::Tensor pad_last(const at::Tensor &x, int64_t size) {
    const int64_t extra = size - x.size(-1);
    return extra > 0 ? at::constant_pad_nd(x, {0, extra}, 0) : x;
}

// The inputs of a convolution operator, checked and laid out for the kernels.
struct ConvInputs {
    at::Tensor hg, r, sh, ysh;
    c10::optional<at::Tensor> wn;
    std::array<int64_t, 6> dims;  // N, C, n1, n2, n2^2, pp
    int64_t num_edges;

    ConvInputs(const char *op, const at::Tensor &hg_, const c10::optional<at::Tensor> &wn_,
               const at::Tensor &r_, const at::Tensor &sh_, const at::Tensor &ysh_) {
        TORCH_CHECK(hg_.dim() == 4, "forcefield::", op, ": hg must be [N, C, n1, pp]");
        const auto dtype = floating_dtype(hg_, op);
        check_real(hg_, op, "hg", dtype);
        check_real(r_, op, "r", dtype);
        check_real(sh_, op, "sh", dtype);
        check_real(ysh_, op, "ysh", dtype);
        hg = hg_.contiguous();
        r = rows(r_);
        sh = rows(sh_);
        ysh = ysh_.contiguous();
        if (wn_.has_value()) {
            check_real(*wn_, op, "wn", dtype);
            wn = rows(*wn_);
        }
        const int64_t k2 = ysh.size(0);
        int64_t n2 = 0;
        while ((n2 + 1) * (n2 + 1) <= k2) ++n2;
        TORCH_CHECK(n2 * n2 == k2, "forcefield::", op, ": ysh must have a square number of rows");
        TORCH_CHECK(hg.size(3) % 8 == 0, "forcefield::", op,
                    ": grid points must be padded to a multiple of 8, got ", hg.size(3));
        TORCH_CHECK(ysh.size(1) == hg.size(3), "forcefield::", op,
                    ": ysh and hg have different numbers of grid points");
        TORCH_CHECK(r.dim() == 3 && r.size(2) >= n2 && sh.dim() == 2 && sh.size(1) >= k2,
                    "forcefield::", op, ": r must be [E, C, >= n2] and sh [E, >= n2^2]");
        num_edges = sh.size(0);
        dims = {hg.size(0), hg.size(1), hg.size(2), n2, k2, hg.size(3)};
        TORCH_CHECK(hg.size(2) - 1 <= kMaxDegree && n2 - 1 <= kMaxDegree, "forcefield::", op,
                    ": the convolution kernels take degrees up to ", kMaxDegree, " per operand");
    }

    at::TensorOptions options() const { return hg.options(); }
};

// ---------------------------------------------------------------------------------------------
// Convolution: Z and its partials.

template <typename R>
void receivers_kernel(const ConvInputs &in, const at::Tensor &sender, const at::Tensor &ptr,
                      const at::Tensor &perm, at::Tensor &z) {
    const auto ws = strides2(in.wn);
    const std::array<int64_t, 2> rs{in.r.stride(0), in.r.stride(1)};
    run_ranges(node_ranges(ptr), "conv_receivers", [&](int64_t b, int64_t e) {
        return Kernels<R>::receivers(in.dims.data(), in.hg.data_ptr<R>(), ptr_or_null<R>(in.wn),
                                     ws.data(), in.r.data_ptr<R>(), rs.data(),
                                     in.sh.data_ptr<R>(), in.sh.stride(0), in.ysh.data_ptr<R>(),
                                     sender.data_ptr<int64_t>(), ptr.data_ptr<int64_t>(),
                                     perm.data_ptr<int64_t>(), z.data_ptr<R>(), b, e);
    });
}

at::Tensor conv_receivers(const at::Tensor &hg, const c10::optional<at::Tensor> &wn,
                          const at::Tensor &r, const at::Tensor &sh, const at::Tensor &ysh,
                          const at::Tensor &sender, const at::Tensor &receiver,
                          const at::Tensor &recv_ptr, const at::Tensor &recv_perm,
                          const at::Tensor &send_ptr, const at::Tensor &send_perm) {
    ConvInputs in("conv_receivers", hg, wn, r, sh, ysh);
    auto snd = index_tensor(sender, "conv_receivers", "sender");
    auto ptr = index_tensor(recv_ptr, "conv_receivers", "recv_ptr");
    auto perm = index_tensor(recv_perm, "conv_receivers", "recv_perm");
    auto z = at::empty({in.dims[0], in.dims[1], in.dims[5]}, in.options());
    if (z.numel() == 0) return z;
    if (in.hg.scalar_type() == at::kFloat)
        receivers_kernel<float>(in, snd, ptr, perm, z);
    else
        receivers_kernel<double>(in, snd, ptr, perm, z);
    return z;
}

using Partials = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

// Outputs of the sender kernels: [N, C, n1, pp], [E, C, n1], [E, C, n2], [E, n2^2] (empty where
// not wanted), and whether each is computed.
struct SenderOutputs {
    std::array<at::Tensor, 4> t;
    std::array<bool, 4> on;

    SenderOutputs(const ConvInputs &in, std::array<bool, 4> want) {
        const auto &d = in.dims;
        const int64_t e = in.num_edges;
        on = {want[0], want[1] && in.wn.has_value(), want[2], want[3]};
        const std::array<std::vector<int64_t>, 4> shapes{
            std::vector<int64_t>{d[0], d[1], d[2], d[5]}, std::vector<int64_t>{e, d[1], d[2]},
            std::vector<int64_t>{e, d[1], d[3]}, std::vector<int64_t>{e, d[4]}};
        for (int k = 0; k < 4; ++k) t[k] = at::empty(on[k] ? shapes[k] : std::vector<int64_t>{0},
                                                     in.options());
    }

    bool any() const { return on[0] || on[1] || on[2] || on[3]; }

    // Zeros where the kernels would not run (no node or no channel), padding for r and sh.
    Partials finish(const ConvInputs &in, bool ran) {
        if (!ran)
            for (int k = 0; k < 4; ++k)
                if (on[k]) t[k].zero_();
        if (on[2]) t[2] = pad_last(t[2], in.r.size(2));
        if (on[3]) t[3] = pad_last(t[3], in.sh.size(1));
        return {t[0], t[1], t[2], t[3]};
    }
};

template <typename R>
void senders_kernel(const ConvInputs &in, const at::Tensor &g, const at::Tensor &receiver,
                    const at::Tensor &ptr, const at::Tensor &perm, SenderOutputs &out) {
    const auto ws = strides2(in.wn);
    const std::array<int64_t, 2> rs{in.r.stride(0), in.r.stride(1)};
    run_ranges(node_ranges(ptr), "conv_senders", [&](int64_t b, int64_t e) {
        return Kernels<R>::senders(
            in.dims.data(), in.hg.data_ptr<R>(), ptr_or_null<R>(in.wn), ws.data(),
            in.r.data_ptr<R>(), rs.data(), in.sh.data_ptr<R>(), in.sh.stride(0),
            in.ysh.data_ptr<R>(), g.data_ptr<R>(), receiver.data_ptr<int64_t>(),
            ptr.data_ptr<int64_t>(), perm.data_ptr<int64_t>(), out_or_null<R>(out.t[0], out.on[0]),
            out_or_null<R>(out.t[1], out.on[1]), out_or_null<R>(out.t[2], out.on[2]),
            out_or_null<R>(out.t[3], out.on[3]), b, e);
    });
}

Partials conv_senders(const at::Tensor &hg, const c10::optional<at::Tensor> &wn,
                      const at::Tensor &r, const at::Tensor &sh, const at::Tensor &ysh,
                      const at::Tensor &g, const at::Tensor &sender, const at::Tensor &receiver,
                      const at::Tensor &recv_ptr, const at::Tensor &recv_perm,
                      const at::Tensor &send_ptr, const at::Tensor &send_perm,
                      std::array<bool, 4> want) {
    ConvInputs in("conv_senders", hg, wn, r, sh, ysh);
    check_real(g, "conv_senders", "g", in.hg.scalar_type());
    auto gc = g.contiguous();
    auto rcv = index_tensor(receiver, "conv_senders", "receiver");
    auto ptr = index_tensor(send_ptr, "conv_senders", "send_ptr");
    auto perm = index_tensor(send_perm, "conv_senders", "send_perm");
    SenderOutputs out(in, want);
    const bool run = in.dims[0] * in.dims[1] > 0 && out.any();
    if (run) {
        if (in.hg.scalar_type() == at::kFloat)
            senders_kernel<float>(in, gc, rcv, ptr, perm, out);
        else
            senders_kernel<double>(in, gc, rcv, ptr, perm, out);
    }
    return out.finish(in, run);
}

// The incoming gradients u = (u0, u1, u2, u3) of the four partials (u1 None exactly when wn is).
struct Upstream {
    at::Tensor u0, u2, u3;
    c10::optional<at::Tensor> u1;
    std::array<int64_t, 10> strides;

    Upstream(const ConvInputs &in, const char *op, const at::Tensor &u0_,
             const c10::optional<at::Tensor> &u1_, const at::Tensor &u2_, const at::Tensor &u3_) {
        const auto dtype = in.hg.scalar_type();
        check_real(u0_, op, "u0", dtype);
        check_real(u2_, op, "u2", dtype);
        check_real(u3_, op, "u3", dtype);
        TORCH_CHECK(u1_.has_value() == in.wn.has_value(), "forcefield::", op,
                    ": u1 must be given exactly when wn is");
        TORCH_CHECK(u0_.sizes() == in.hg.sizes(), "forcefield::", op, ": u0 must be shaped as hg");
        TORCH_CHECK(u2_.dim() == 3 && u2_.size(2) >= in.dims[3] && u3_.dim() == 2 &&
                        u3_.size(1) >= in.dims[4],
                    "forcefield::", op, ": u2 and u3 must be shaped as r and sh");
        u0 = u0_.contiguous();
        u2 = rows(u2_);
        u3 = rows(u3_);
        if (u1_.has_value()) {
            check_real(*u1_, op, "u1", dtype);
            u1 = rows(*u1_);
        }
        const auto ws = strides2(in.wn);
        const auto s1 = strides2(u1);
        strides = {ws[0], ws[1], in.r.stride(0), in.r.stride(1), in.sh.stride(0),
                   s1[0], s1[1], u2.stride(0), u2.stride(1), u3.stride(0)};
    }
};

template <typename R>
void double_senders_kernel(const ConvInputs &in, const Upstream &u, const at::Tensor &g,
                           const at::Tensor &receiver, const at::Tensor &ptr,
                           const at::Tensor &perm, SenderOutputs &out) {
    run_ranges(node_ranges(ptr), "conv_double_senders", [&](int64_t b, int64_t e) {
        return Kernels<R>::double_senders(
            in.dims.data(), u.strides.data(), in.hg.data_ptr<R>(), ptr_or_null<R>(in.wn),
            in.r.data_ptr<R>(), in.sh.data_ptr<R>(), in.ysh.data_ptr<R>(), g.data_ptr<R>(),
            u.u0.data_ptr<R>(), ptr_or_null<R>(u.u1), u.u2.data_ptr<R>(), u.u3.data_ptr<R>(),
            receiver.data_ptr<int64_t>(), ptr.data_ptr<int64_t>(), perm.data_ptr<int64_t>(),
            out_or_null<R>(out.t[0], out.on[0]), out_or_null<R>(out.t[1], out.on[1]),
            out_or_null<R>(out.t[2], out.on[2]), out_or_null<R>(out.t[3], out.on[3]), b, e);
    });
}

Partials conv_double_senders(const at::Tensor &hg, const c10::optional<at::Tensor> &wn,
                             const at::Tensor &r, const at::Tensor &sh, const at::Tensor &ysh,
                             const at::Tensor &g, const at::Tensor &u0,
                             const c10::optional<at::Tensor> &u1, const at::Tensor &u2,
                             const at::Tensor &u3, const at::Tensor &sender,
                             const at::Tensor &receiver, const at::Tensor &recv_ptr,
                             const at::Tensor &recv_perm, const at::Tensor &send_ptr,
                             const at::Tensor &send_perm, std::array<bool, 4> want) {
    const char *op = "conv_double_senders";
    ConvInputs in(op, hg, wn, r, sh, ysh);
    Upstream u(in, op, u0, u1, u2, u3);
    check_real(g, op, "g", in.hg.scalar_type());
    auto gc = g.contiguous();
    auto rcv = index_tensor(receiver, op, "receiver");
    auto ptr = index_tensor(send_ptr, op, "send_ptr");
    auto perm = index_tensor(send_perm, op, "send_perm");
    SenderOutputs out(in, want);
    const bool run = in.dims[0] * in.dims[1] > 0 && out.any();
    if (run) {
        if (in.hg.scalar_type() == at::kFloat)
            double_senders_kernel<float>(in, u, gc, rcv, ptr, perm, out);
        else
            double_senders_kernel<double>(in, u, gc, rcv, ptr, perm, out);
    }
    return out.finish(in, run);
}

template <typename R>
void double_receivers_kernel(const ConvInputs &in, const Upstream &u, const at::Tensor &sender,
                             const at::Tensor &ptr, const at::Tensor &perm, at::Tensor &z) {
    run_ranges(node_ranges(ptr), "conv_double_receivers", [&](int64_t b, int64_t e) {
        return Kernels<R>::double_receivers(
            in.dims.data(), u.strides.data(), in.hg.data_ptr<R>(), ptr_or_null<R>(in.wn),
            in.r.data_ptr<R>(), in.sh.data_ptr<R>(), in.ysh.data_ptr<R>(), u.u0.data_ptr<R>(),
            ptr_or_null<R>(u.u1), u.u2.data_ptr<R>(), u.u3.data_ptr<R>(),
            sender.data_ptr<int64_t>(), ptr.data_ptr<int64_t>(), perm.data_ptr<int64_t>(),
            z.data_ptr<R>(), b, e);
    });
}

at::Tensor conv_double_receivers(const at::Tensor &hg, const c10::optional<at::Tensor> &wn,
                                 const at::Tensor &r, const at::Tensor &sh,
                                 const at::Tensor &ysh, const at::Tensor &u0,
                                 const c10::optional<at::Tensor> &u1, const at::Tensor &u2,
                                 const at::Tensor &u3, const at::Tensor &sender,
                                 const at::Tensor &receiver, const at::Tensor &recv_ptr,
                                 const at::Tensor &recv_perm, const at::Tensor &send_ptr,
                                 const at::Tensor &send_perm) {
    const char *op = "conv_double_receivers";
    ConvInputs in(op, hg, wn, r, sh, ysh);
    Upstream u(in, op, u0, u1, u2, u3);
    auto snd = index_tensor(sender, op, "sender");
    auto ptr = index_tensor(recv_ptr, op, "recv_ptr");
    auto perm = index_tensor(recv_perm, op, "recv_perm");
    auto z = at::empty({in.dims[0], in.dims[1], in.dims[5]}, in.options());
    if (z.numel() == 0) return z;
    if (in.hg.scalar_type() == at::kFloat)
        double_receivers_kernel<float>(in, u, snd, ptr, perm, z);
    else
        double_receivers_kernel<double>(in, u, snd, ptr, perm, z);
    return z;
}

// ---------------------------------------------------------------------------------------------
// Many-body powers: q[n, j, c, k] = sum_p proj[k, p] (sum_l w[n, j, c, l] A[n, c, l, p])^(nu0+j).

struct PowersInputs {
    at::Tensor a, w, y, proj;
    std::array<int64_t, 8> dims;  // N, C, K1, n1, n_nu, nu0, pp, K_out

    PowersInputs(const char *op, const at::Tensor &a_, const at::Tensor &w_, const at::Tensor &y_,
                 const at::Tensor &proj_, int64_t nu0) {
        const auto dtype = floating_dtype(a_, op);
        check_real(a_, op, "a", dtype);
        check_real(w_, op, "w", dtype);
        check_real(y_, op, "y", dtype);
        check_real(proj_, op, "proj", dtype);
        TORCH_CHECK(a_.dim() == 3 && w_.dim() == 4 && w_.size(0) == a_.size(0) &&
                        w_.size(2) == a_.size(1) && y_.size(0) == a_.size(2) &&
                        proj_.size(1) == y_.size(1),
                    "forcefield::", op, ": expected a [N, C, K1], w [N, n_nu, C, L1+1], "
                    "y [K1, pp], proj [K_out, pp]");
        TORCH_CHECK(nu0 >= 1, "forcefield::", op, ": nu0 must be at least 1");
        a = a_.contiguous();
        w = w_.contiguous();
        y = y_.contiguous();
        proj = proj_.contiguous();
        dims = {a.size(0), a.size(1), a.size(2), w.size(3), w.size(1), nu0, y.size(1),
                proj.size(0)};
    }

    std::vector<Range> ranges() const {
        return even_ranges(dims[0], dims[1], kMinPowerRowsPerThread);
    }
};

at::Tensor powers_forward(const at::Tensor &a, const at::Tensor &w, const at::Tensor &y,
                          const at::Tensor &proj, int64_t nu0) {
    PowersInputs in("powers_forward", a, w, y, proj, nu0);
    auto q = at::empty({in.dims[0], in.dims[4], in.dims[1], in.dims[7]}, in.a.options());
    if (q.numel() == 0) return q;
    AT_DISPATCH_FLOATING_TYPES(in.a.scalar_type(), "powers_forward", [&] {
        run_ranges(in.ranges(), "powers_forward", [&](int64_t b, int64_t e) {
            return Kernels<scalar_t>::powers_forward(
                in.dims.data(), in.a.data_ptr<scalar_t>(), in.w.data_ptr<scalar_t>(),
                in.y.data_ptr<scalar_t>(), in.proj.data_ptr<scalar_t>(),
                q.data_ptr<scalar_t>(), b, e);
        });
    });
    return q;
}

std::tuple<at::Tensor, at::Tensor> powers_backward(const at::Tensor &a, const at::Tensor &w,
                                                   const at::Tensor &y, const at::Tensor &proj,
                                                   int64_t nu0, const at::Tensor &g,
                                                   std::array<bool, 2> want) {
    PowersInputs in("powers_backward", a, w, y, proj, nu0);
    check_real(g, "powers_backward", "g", in.a.scalar_type());
    auto gc = g.contiguous();
    auto da = want[0] ? at::empty_like(in.a) : at::empty({0}, in.a.options());
    auto dw = want[1] ? at::empty_like(in.w) : at::empty({0}, in.a.options());
    if (in.a.numel() == 0 || in.w.numel() == 0) {
        da.zero_();
        dw.zero_();
        return {da, dw};
    }
    if (!want[0] && !want[1]) return {da, dw};
    AT_DISPATCH_FLOATING_TYPES(in.a.scalar_type(), "powers_backward", [&] {
        run_ranges(in.ranges(), "powers_backward", [&](int64_t b, int64_t e) {
            return Kernels<scalar_t>::powers_backward(
                in.dims.data(), in.a.data_ptr<scalar_t>(), in.w.data_ptr<scalar_t>(),
                in.y.data_ptr<scalar_t>(), in.proj.data_ptr<scalar_t>(),
                gc.data_ptr<scalar_t>(), out_or_null<scalar_t>(da, want[0]),
                out_or_null<scalar_t>(dw, want[1]), b, e);
        });
    });
    return {da, dw};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> powers_double(
    const at::Tensor &a, const at::Tensor &w, const at::Tensor &y, const at::Tensor &proj,
    int64_t nu0, const at::Tensor &g, const c10::optional<at::Tensor> &u,
    const c10::optional<at::Tensor> &vw, std::array<bool, 3> want) {
    const char *op = "powers_double";
    PowersInputs in(op, a, w, y, proj, nu0);
    const auto dtype = in.a.scalar_type();
    check_real(g, op, "g", dtype);
    auto gc = g.contiguous();
    c10::optional<at::Tensor> uc, vc;
    if (u.has_value()) {
        check_real(*u, op, "u", dtype);
        uc = u->contiguous();
    }
    if (vw.has_value()) {
        check_real(*vw, op, "vw", dtype);
        vc = vw->contiguous();
    }
    auto ga = want[0] ? at::empty_like(in.a) : at::empty({0}, in.a.options());
    auto gw = want[1] ? at::empty_like(in.w) : at::empty({0}, in.a.options());
    auto gg = want[2] ? at::empty_like(gc) : at::empty({0}, in.a.options());
    if (in.a.numel() == 0 || in.w.numel() == 0) {
        ga.zero_();
        gw.zero_();
        gg.zero_();
        return {ga, gw, gg};
    }
    AT_DISPATCH_FLOATING_TYPES(dtype, "powers_double", [&] {
        run_ranges(in.ranges(), op, [&](int64_t b, int64_t e) {
            return Kernels<scalar_t>::powers_double(
                in.dims.data(), in.a.data_ptr<scalar_t>(), in.w.data_ptr<scalar_t>(),
                in.y.data_ptr<scalar_t>(), in.proj.data_ptr<scalar_t>(),
                gc.data_ptr<scalar_t>(), ptr_or_null<scalar_t>(uc), ptr_or_null<scalar_t>(vc),
                out_or_null<scalar_t>(ga, want[0]), out_or_null<scalar_t>(gw, want[1]),
                out_or_null<scalar_t>(gg, want[2]), b, e);
        });
    });
    return {ga, gw, gg};
}

// ---------------------------------------------------------------------------------------------
// The grid Gaunt product of rows [outer, inner, D] (any strides, 0 broadcasts).

at::Tensor gaunt_grid(const at::Tensor &x1, const at::Tensor &x2, const at::Tensor &dims,
                      const at::Tensor &legendre1, const at::Tensor &legendre2,
                      const at::Tensor &legendre_out, const at::Tensor &azimuth_cos,
                      const at::Tensor &azimuth_sin, const at::Tensor &output_cos,
                      const at::Tensor &output_sin) {
    const char *op = "gaunt_grid";
    const auto dtype = floating_dtype(x1, op);
    check_real(x2, op, "x2", dtype);
    TORCH_CHECK(x1.dim() == 3 && x2.dim() == 3 && x1.size(0) == x2.size(0) &&
                    x1.size(1) == x2.size(1),
                "forcefield::gaunt_grid: x1 and x2 must be [outer, inner, D] of equal rows");
    TORCH_CHECK(dims.scalar_type() == at::kInt && dims.numel() == 6,
                "forcefield::gaunt_grid: dims must be six int32");
    auto d = dims.contiguous();
    const int32_t *dp = d.data_ptr<int32_t>();
    TORCH_CHECK(x1.size(2) == (dp[0] + 1) * (dp[0] + 1) && x2.size(2) == (dp[1] + 1) * (dp[1] + 1),
                "forcefield::gaunt_grid: the inputs' last dimensions do not match the tables");
    const int64_t k_out = (dp[2] + 1) * (dp[2] + 1);
    auto a = rows(x1);
    auto b = rows(x2);
    std::array<at::Tensor, 7> tables{legendre1, legendre2, legendre_out, azimuth_cos,
                                     azimuth_sin, output_cos, output_sin};
    for (auto &t : tables) {
        check_real(t, op, "table", dtype);
        t = t.contiguous();
    }
    auto out = at::empty({x1.size(0), x1.size(1), k_out}, x1.options());
    if (out.numel() == 0) return out;
    const std::array<int64_t, 2> shape{a.size(0), a.size(1)};
    const std::array<int64_t, 2> s1{a.stride(0), a.stride(1)};
    const std::array<int64_t, 2> s2{b.stride(0), b.stride(1)};
    const int64_t total = shape[0] * shape[1];
    AT_DISPATCH_FLOATING_TYPES(dtype, "gaunt_grid", [&] {
        run_ranges(even_ranges(total, 1, kMinGridRowsPerThread, kGridBlockRows), op,
                   [&](int64_t begin, int64_t end) {
                       return Kernels<scalar_t>::grid(
                           shape.data(), a.data_ptr<scalar_t>(), s1.data(),
                           b.data_ptr<scalar_t>(), s2.data(), out.data_ptr<scalar_t>(), begin,
                           end, dp, tables[0].data_ptr<scalar_t>(),
                           tables[1].data_ptr<scalar_t>(), tables[2].data_ptr<scalar_t>(),
                           tables[3].data_ptr<scalar_t>(), tables[4].data_ptr<scalar_t>(),
                           tables[5].data_ptr<scalar_t>(), tables[6].data_ptr<scalar_t>());
                   });
    });
    return out;
}

}  // namespace

// The schemas: the same text is what Python's torch.ops.forcefield sees.
TORCH_LIBRARY(forcefield, m) {
    const std::string index = "Tensor sender, Tensor receiver, Tensor recv_ptr, Tensor recv_perm, "
                              "Tensor send_ptr, Tensor send_perm";
    const std::string conv = "Tensor hg, Tensor? wn, Tensor r, Tensor sh, Tensor ysh";
    const std::string partials = "(Tensor, Tensor, Tensor, Tensor)";
    m.def(("conv_receivers(" + conv + ", " + index + ") -> Tensor").c_str());
    m.def(("conv_senders(" + conv + ", Tensor g, " + index + ", bool[4] want) -> " + partials)
              .c_str());
    m.def(("conv_double_senders(" + conv + ", Tensor g, Tensor u0, Tensor? u1, Tensor u2, "
           "Tensor u3, " + index + ", bool[4] want) -> " + partials).c_str());
    m.def(("conv_double_receivers(" + conv + ", Tensor u0, Tensor? u1, Tensor u2, Tensor u3, " +
           index + ") -> Tensor").c_str());
    m.def("powers_forward(Tensor a, Tensor w, Tensor y, Tensor proj, int nu0) -> Tensor");
    m.def("powers_backward(Tensor a, Tensor w, Tensor y, Tensor proj, int nu0, Tensor g, "
          "bool[2] want) -> (Tensor, Tensor)");
    m.def("powers_double(Tensor a, Tensor w, Tensor y, Tensor proj, int nu0, Tensor g, "
          "Tensor? u, Tensor? vw, bool[3] want) -> (Tensor, Tensor, Tensor)");
    m.def("gaunt_grid(Tensor x1, Tensor x2, Tensor dims, Tensor legendre1, Tensor legendre2, "
          "Tensor legendre_out, Tensor azimuth_cos, Tensor azimuth_sin, Tensor output_cos, "
          "Tensor output_sin) -> Tensor");
    // the operator set's version: packages record it, loaders compare it
    m.def("version() -> int", []() -> int64_t { return kOpsVersion; });
    // the vector instruction set the grid kernel dispatched to (benchmarks report it)
    m.def("vector_isa() -> str", []() -> std::string { return gaunt_grid_isa(); });
}

TORCH_LIBRARY_IMPL(forcefield, CPU, m) {
    m.impl("conv_receivers", &conv_receivers);
    m.impl("conv_senders", &conv_senders);
    m.impl("conv_double_senders", &conv_double_senders);
    m.impl("conv_double_receivers", &conv_double_receivers);
    m.impl("powers_forward", &powers_forward);
    m.impl("powers_backward", &powers_backward);
    m.impl("powers_double", &powers_double);
    m.impl("gaunt_grid", &gaunt_grid);
}
