// oneDNN convolutions for XLA:CPU, called through the XLA FFI (jax.ffi.ffi_call).
//
// Stride-1 "SAME" convolutions with an odd square kernel, float32, in the layouts JAX uses:
// activations NHWC (N, H, W, C), kernels HWIO (k, k, C_in, C_out). Three handlers:
//   EdsrConvForward        x (N,H,W,Ci), w (k,k,Ci,Co), b (Co)  -> y (N,H,W,Co) = conv(x, w) + b
//   EdsrConvBackwardData   dy (N,H,W,Co), w (k,k,Ci,Co)         -> dx (N,H,W,Ci)
//   EdsrConvBackwardWeights x (N,H,W,Ci), dy (N,H,W,Co)         -> dw (k,k,Ci,Co)
// (The bias gradient, a plain sum of dy, is left to XLA: oneDNN's fused one accumulates
// sequentially in float32, ~3e-5 relative error over a 16x48x48 batch against XLA's ~1e-7.)
// oneDNN reads and writes the NHWC activations in place; only the (small) kernels are reordered
// to and from oneDNN's blocked weight layout. Primitives are built once per shape and kept in
// a least-recently-used cache of kPlanCacheCapacity shapes (EdsrConvPlanCacheSize/Capacity
// report it). Every handler first checks that its buffers' ranks, kernel size, channels and
// spatial sizes agree (CheckShapes) and returns an InvalidArgument error naming the shapes
// otherwise, before oneDNN touches memory.
// Threading: oneDNN's OpenMP runtime (the onednn-cpu-gomp wheel).

#include <cstdint>
#include <list>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "oneapi/dnnl/dnnl.hpp"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;
using dnnl::memory;
using tag = dnnl::memory::format_tag;

namespace {

dnnl::engine& Engine() {
  static dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

dnnl::stream& Stream() {
  thread_local dnnl::stream stream(Engine());
  return stream;
}

struct Shape {
  int64_t n, h, w, ci, co, k;
  bool operator<(const Shape& o) const {
    return std::tie(n, h, w, ci, co, k) < std::tie(o.n, o.h, o.w, o.ci, o.co, o.k);
  }
};

// Everything one shape needs: the three primitives with their descriptors.
struct Plan {
  memory::desc src, dst, user_weights, bias;
  dnnl::convolution_forward::primitive_desc fwd_pd;
  dnnl::convolution_backward_data::primitive_desc bwd_data_pd;
  dnnl::convolution_backward_weights::primitive_desc bwd_weights_pd;
  dnnl::convolution_forward fwd;
  dnnl::convolution_backward_data bwd_data;
  dnnl::convolution_backward_weights bwd_weights;
};

std::unique_ptr<Plan> MakePlan(const Shape& s) {
  auto plan = std::make_unique<Plan>();
  const memory::dims strides{1, 1}, pad{s.k / 2, s.k / 2};
  const auto f32 = memory::data_type::f32;
  plan->src = memory::desc({s.n, s.ci, s.h, s.w}, f32, tag::nhwc);
  plan->dst = memory::desc({s.n, s.co, s.h, s.w}, f32, tag::nhwc);
  plan->user_weights = memory::desc({s.co, s.ci, s.k, s.k}, f32, tag::hwio);
  plan->bias = memory::desc({s.co}, f32, tag::a);
  const memory::desc any_weights({s.co, s.ci, s.k, s.k}, f32, tag::any);
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);  // safe for concurrent calls
  auto& eng = Engine();
  plan->fwd_pd = dnnl::convolution_forward::primitive_desc(
      eng, dnnl::prop_kind::forward_training, dnnl::algorithm::convolution_direct, plan->src,
      any_weights, plan->bias, plan->dst, strides, pad, pad, attr);
  plan->bwd_data_pd = dnnl::convolution_backward_data::primitive_desc(
      eng, dnnl::algorithm::convolution_direct, plan->src, any_weights, plan->dst, strides, pad,
      pad, plan->fwd_pd, attr);
  plan->bwd_weights_pd = dnnl::convolution_backward_weights::primitive_desc(
      eng, dnnl::algorithm::convolution_direct, plan->src, any_weights, plan->dst, strides, pad,
      pad, plan->fwd_pd, attr);
  plan->fwd = dnnl::convolution_forward(plan->fwd_pd);
  plan->bwd_data = dnnl::convolution_backward_data(plan->bwd_data_pd);
  plan->bwd_weights = dnnl::convolution_backward_weights(plan->bwd_weights_pd);
  return plan;
}

// The plans of the most recently used shapes. EDSR uses 4-6 shapes per input size (head,
// body, upsampler, tail); 64 covers a training patch size plus a dozen inference buckets, and
// an evicted shape only costs rebuilding its primitives (a few milliseconds).
constexpr size_t kPlanCacheCapacity = 64;

class PlanCache {
 public:
  // The plan of shape ``s``, built on first use; marks it most recently used and evicts the
  // least recently used beyond kPlanCacheCapacity. Callers hold the shared_ptr while they
  // execute, so an eviction by another thread never frees a plan in use.
  std::shared_ptr<const Plan> Get(const Shape& s) {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = index_.find(s);
    if (it != index_.end()) {
      order_.splice(order_.begin(), order_, it->second);
      return it->second->second;
    }
    std::shared_ptr<const Plan> plan = MakePlan(s);
    order_.emplace_front(s, plan);
    index_[s] = order_.begin();
    while (order_.size() > kPlanCacheCapacity) {
      index_.erase(order_.back().first);
      order_.pop_back();
    }
    return plan;
  }

  size_t Size() {
    std::lock_guard<std::mutex> lock(mu_);
    return order_.size();
  }

 private:
  using Entry = std::pair<Shape, std::shared_ptr<const Plan>>;
  std::mutex mu_;
  std::list<Entry> order_;  // most recently used first
  std::map<Shape, std::list<Entry>::iterator> index_;
};

PlanCache& Plans() {
  static PlanCache cache;
  return cache;
}

// A buffer for a oneDNN memory descriptor: the user's pointer when the layouts agree,
// otherwise owned storage.
struct Staged {
  std::vector<uint8_t> storage;
  memory mem;
  bool reordered = false;  // true: mem is owned storage in another layout than the user's
};

Staged Stage(const memory::desc& want, const memory& user) {
  Staged out;
  if (want == user.get_desc()) {
    out.mem = user;
  } else {
    out.storage.resize(want.get_size());
    out.mem = memory(want, Engine(), out.storage.data());
    out.reordered = true;
  }
  return out;
}

// The user's HWIO kernel as a primitive reads it (``want``): the buffer itself, or a reordered
// copy in owned storage.
Staged KernelIn(const memory::desc& want, memory& user, dnnl::stream& strm) {
  Staged kernel = Stage(want, user);
  if (kernel.reordered) dnnl::reorder(user, kernel.mem).execute(strm, user, kernel.mem);
  return kernel;
}

memory Scratchpad(const memory::desc& desc, std::vector<uint8_t>& storage) {
  storage.resize(desc.get_size());
  return memory(desc, Engine(), storage.data());
}

std::string Dims(ffi::Span<const int64_t> dims) {
  std::string out = "(";
  for (size_t i = 0; i < dims.size(); ++i) out += (i ? ", " : "") + std::to_string(dims[i]);
  return out + ")";
}

// Checks one call's buffers before oneDNN reads or writes them: ``in`` is the C_in side
// activation (N, H, W, C_in), ``out`` the C_out side (N, H, W, C_out), ``weights`` the kernel
// (k, k, C_in, C_out) with k odd; ``op`` names the handler in the message. Fills ``s``.
ffi::Error CheckShapes(const char* op, ffi::Span<const int64_t> in, ffi::Span<const int64_t> out,
                       ffi::Span<const int64_t> weights, Shape* s) {
  auto bad = [&](const std::string& why) {
    return ffi::Error::InvalidArgument(std::string("edsr oneDNN conv (") + op + "): " + why +
                                       "; activations " + Dims(in) + " -> " + Dims(out) +
                                       ", kernel " + Dims(weights));
  };
  if (in.size() != 4 || out.size() != 4 || weights.size() != 4)
    return bad("expected NHWC activations and an HWIO kernel (rank 4 each)");
  if (weights[0] != weights[1] || weights[0] % 2 != 1)
    return bad("the kernel must be square with an odd size");
  if (in[3] != weights[2]) return bad("the input channels differ from the kernel's C_in");
  if (out[3] != weights[3]) return bad("the output channels differ from the kernel's C_out");
  if (in[0] != out[0] || in[1] != out[1] || in[2] != out[2])
    return bad("N, H and W must agree between the activations (stride 1, 'SAME')");
  for (int64_t d : {in[0], in[1], in[2], in[3], out[3]})
    if (d < 1) return bad("every dimension must be at least 1");
  *s = Shape{in[0], in[1], in[2], weights[2], weights[3], weights[0]};
  return ffi::Error::Success();
}

template <typename F>
ffi::Error Guard(F&& f) {
  try {
    f();
  } catch (const dnnl::error& e) {
    return ffi::Error::Internal(std::string("oneDNN: ") + e.what());
  } catch (const std::exception& e) {
    return ffi::Error::Internal(e.what());
  }
  return ffi::Error::Success();
}

ffi::Error Forward(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> w, ffi::Buffer<ffi::F32> b,
                   ffi::ResultBuffer<ffi::F32> y) {
  Shape s;
  if (auto err = CheckShapes("forward", x.dimensions(), y->dimensions(), w.dimensions(), &s);
      !err.success())
    return err;
  if (b.dimensions().size() != 1 || b.dimensions()[0] != s.co)
    return ffi::Error::InvalidArgument("edsr oneDNN conv (forward): bias " + Dims(b.dimensions()) +
                                       " must be (C_out,) = (" + std::to_string(s.co) + ")");
  return Guard([&] {
    const auto plan = Plans().Get(s);
    const Plan& p = *plan;
    auto& eng = Engine();
    auto& strm = Stream();
    memory src(p.src, eng, x.typed_data()), dst(p.dst, eng, y->typed_data());
    memory user_w(p.user_weights, eng, w.typed_data()), bias(p.bias, eng, b.typed_data());
    Staged wei = KernelIn(p.fwd_pd.weights_desc(), user_w, strm);
    std::vector<uint8_t> scratch;
    p.fwd.execute(strm, {{DNNL_ARG_SRC, src}, {DNNL_ARG_WEIGHTS, wei.mem}, {DNNL_ARG_BIAS, bias},
                         {DNNL_ARG_DST, dst},
                         {DNNL_ARG_SCRATCHPAD, Scratchpad(p.fwd_pd.scratchpad_desc(), scratch)}});
    strm.wait();
  });
}

ffi::Error BackwardData(ffi::Buffer<ffi::F32> dy, ffi::Buffer<ffi::F32> w,
                        ffi::ResultBuffer<ffi::F32> dx) {
  Shape s;
  if (auto err = CheckShapes("backward data", dx->dimensions(), dy.dimensions(), w.dimensions(), &s);
      !err.success())
    return err;
  return Guard([&] {
    const auto plan = Plans().Get(s);
    const Plan& p = *plan;
    auto& eng = Engine();
    auto& strm = Stream();
    memory diff_dst(p.dst, eng, dy.typed_data()), diff_src(p.src, eng, dx->typed_data());
    memory user_w(p.user_weights, eng, w.typed_data());
    Staged wei = KernelIn(p.bwd_data_pd.weights_desc(), user_w, strm);
    std::vector<uint8_t> scratch;
    p.bwd_data.execute(
        strm, {{DNNL_ARG_DIFF_DST, diff_dst}, {DNNL_ARG_WEIGHTS, wei.mem},
               {DNNL_ARG_DIFF_SRC, diff_src},
               {DNNL_ARG_SCRATCHPAD, Scratchpad(p.bwd_data_pd.scratchpad_desc(), scratch)}});
    strm.wait();
  });
}

ffi::Error BackwardWeights(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> dy,
                           ffi::ResultBuffer<ffi::F32> dw) {
  Shape s;
  if (auto err = CheckShapes("backward weights", x.dimensions(), dy.dimensions(), dw->dimensions(), &s);
      !err.success())
    return err;
  return Guard([&] {
    const auto plan = Plans().Get(s);
    const Plan& p = *plan;
    auto& eng = Engine();
    auto& strm = Stream();
    memory src(p.src, eng, x.typed_data()), diff_dst(p.dst, eng, dy.typed_data());
    memory user_dw(p.user_weights, eng, dw->typed_data());
    Staged wei = Stage(p.bwd_weights_pd.diff_weights_desc(), user_dw);
    std::vector<uint8_t> scratch;
    p.bwd_weights.execute(
        strm, {{DNNL_ARG_SRC, src}, {DNNL_ARG_DIFF_DST, diff_dst},
               {DNNL_ARG_DIFF_WEIGHTS, wei.mem},
               {DNNL_ARG_SCRATCHPAD, Scratchpad(p.bwd_weights_pd.scratchpad_desc(), scratch)}});
    if (wei.reordered) dnnl::reorder(wei.mem, user_dw).execute(strm, wei.mem, user_dw);
    strm.wait();
  });
}

}  // namespace

#pragma GCC visibility push(default)

// The plan cache's current number of shapes and its capacity (for tests and diagnostics).
extern "C" int64_t EdsrConvPlanCacheSize() { return static_cast<int64_t>(Plans().Size()); }
extern "C" int64_t EdsrConvPlanCacheCapacity() { return static_cast<int64_t>(kPlanCacheCapacity); }

XLA_FFI_DEFINE_HANDLER_SYMBOL(EdsrConvForward, Forward,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(EdsrConvBackwardData, BackwardData,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(EdsrConvBackwardWeights, BackwardWeights,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());

#pragma GCC visibility pop
