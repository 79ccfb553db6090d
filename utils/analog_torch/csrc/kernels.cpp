// C++ kernels of the torch backend on a CPU (built on first use by torch.utils.cpp_extension; see
// utils/analog_torch/native.py). They do what utils/analog_torch/tile.py does with tensor
// operations, in one call each, because on small tensors a tensor operation costs microseconds of
// dispatch and a training step of the MNIST FCN would run about a thousand of them:
//
//   io_pass       analog_mvm: ABS_MAX noise management, DAC, matrix product, weight and output
//                 noise, ADC, ITERATIVE bound management.
//   saturated     the outputs at the ADC's bound (no error passes back through them), or None.
//   pulse_update  the pulsed update of one soft-bounds array, pulse by pulse as AIHWKit applies it:
//                 per sample the stochastic pulse trains with bit-length and update management,
//                 and each coincidence one soft-bounds pulse with cycle-to-cycle noise, clipped at
//                 the device's bounds.
//   moment_update the moment-matched update: the coincidence counts' mean and covariance summed
//                 line by line over the samples (for a convolution's many patches: by matrix
//                 products), then the soft-bounds closed form and the rest of the variance as
//                 noise, in one vectorized loop per line.
//
// Random numbers come from a xoshiro256** stream seeded from torch's default CPU generator, so
// torch.manual_seed makes a run repeatable and a saved torch RNG state resumes it; Gaussian ones
// from the Box–Muller transform of hashed counters that the stream picks (fill_gauss).

#include <torch/extension.h>

#include <ATen/CPUGeneratorImpl.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <mutex>
#include <vector>

namespace {

class Rng {
 public:
  explicit Rng(uint64_t seed) {
    for (auto& word : s_) {  // splitmix64
      seed += 0x9E3779B97F4A7C15ULL;
      uint64_t z = seed;
      z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
      z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
      word = z ^ (z >> 31);
    }
  }
  uint64_t next() {
    const uint64_t result = rotl(s_[1] * 5, 7) * 9;
    const uint64_t t = s_[1] << 17;
    s_[2] ^= s_[0];
    s_[3] ^= s_[1];
    s_[1] ^= s_[2];
    s_[0] ^= s_[3];
    s_[2] ^= t;
    s_[3] = rotl(s_[3], 45);
    return result;
  }
  // 32 uniformly random bits (the two halves of one 64-bit draw in turn)
  uint32_t next32() {
    if (have_half_) {
      have_half_ = false;
      return half_;
    }
    const uint64_t v = next();
    half_ = static_cast<uint32_t>(v);
    have_half_ = true;
    return static_cast<uint32_t>(v >> 32);
  }
  // an index in [0, n)
  int64_t below(int64_t n) {
    return static_cast<int64_t>((static_cast<unsigned __int128>(next()) * n) >> 64);
  }

 private:
  static uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }
  uint64_t s_[4];
  uint32_t half_ = 0;
  bool have_half_ = false;
};

// the lines of v (n values) that carry a signal: their indices, and for each the threshold below
// which 32 random bits fire a pulse in a slot, for the probability min(|v|·scale, 1) (to within
// 2^-33). Returns how many.
inline int64_t live_lines(const float* v, int64_t n, float scale, int32_t* idx, int64_t* thr) {
  int64_t count = 0;
  for (int64_t j = 0; j < n; ++j) {
    if (v[j] == 0) continue;
    const float p = std::min(std::abs(v[j]) * scale, 1.0f);
    idx[count] = static_cast<int32_t>(j);
    thr[count++] = static_cast<int64_t>(static_cast<double>(p) * 4294967296.0 + 0.5);
  }
  return count;
}

uint64_t torch_seed() {
  auto gen = at::detail::getDefaultCPUGenerator();
  std::lock_guard<std::mutex> lock(gen.mutex());
  return at::check_generator<at::CPUGeneratorImpl>(gen)->random64();
}

// 1.5·2^23: adding it to a float of magnitude below 2^22 and subtracting it again rounds that
// float to an integer, half to even
constexpr float kRoundMagic = 12582912.0f;

// onto the grid of `step` (none if 0), rounding half to even, as torch.round(v / step) * step
// (the same division, so ties round alike: the largest input halved by bound management is one).
// The float adder rounds (1.5·2^23 trick) on v / step clamped to ±2^22, which changes nothing once
// clipped to a bound of fewer than 2^22 steps, and keeps the loops branch-free.
inline float quantize(float v, float step) {
  constexpr float kLimit = 4194304.0f;
  const float t = std::min(std::max(v / step, -kLimit), kLimit);
  return ((t + kRoundMagic) - kRoundMagic) * step;
}

// max |v[e]| over n values (0 if none): eight running maxima side by side, which vectorize (one
// running maximum waits on the previous comparison at every value); the same result
inline float max_abs(const float* v, int64_t n) {
  float lane[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t e = 0;
  for (; e + 8 <= n; e += 8)
    for (int l = 0; l < 8; ++l) lane[l] = std::max(lane[l], std::abs(v[e + l]));
  for (; e < n; ++e) lane[0] = std::max(lane[0], std::abs(v[e]));
  float m = 0;
  for (float l : lane) m = std::max(m, l);
  return m;
}

struct PassParams {
  float inp_bound, inp_step, out_bound, out_step, out_noise, w_noise;
  bool test_negative;
};

// a 32-bit integer hash (Wellons' lowbias32): random bits from (seed, index), for loops without
// generator state, which vectorize: the Gaussian numbers and the moment mode's per-device noise
inline uint32_t mix32(uint32_t v) {
  v ^= v >> 16;
  v *= 0x7feb352dU;
  v ^= v >> 15;
  v *= 0x846ca68bU;
  v ^= v >> 16;
  return v;
}

// ln u for u in (0, 1], branch-free: u = 2^e·m with m in [√½, √2), and ln m = 2·atanh(s) with
// s = (m − 1)/(m + 1), |s| ≤ 0.172, by its series to s⁹ (relative error < 1e-9)
inline float log_unit(float u) {
  int32_t bits;
  std::memcpy(&bits, &u, sizeof bits);
  int32_t e = ((bits >> 23) & 0xff) - 127;
  const int32_t m_bits = (bits & 0x7fffff) | 0x3f800000;  // m in [1, 2)
  float m;
  std::memcpy(&m, &m_bits, sizeof m);
  const bool high = m > 1.41421356f;
  m = high ? m * 0.5f : m;
  e = high ? e + 1 : e;
  const float s = (m - 1) / (m + 1), s2 = s * s;
  const float series = 1 + s2 * (1.0f / 3 + s2 * (1.0f / 5 + s2 * (1.0f / 7 + s2 * (1.0f / 9))));
  return 2 * s * series + static_cast<float>(e) * 0.6931471806f;
}

// cos and sin of the angle 2π·t, t in [0, 1), branch-free: its quadrant's midpoint (q + ½)·π/2
// turned by f in [−π/4, π/4), whose sine and cosine come from their series (to f¹¹ and f¹⁰:
// error < 3e-8)
inline void cos_sin_turn(float t, float& c, float& s) {
  const float t4 = t * 4;
  const int32_t q = static_cast<int32_t>(t4);  // the quadrant, 0…3
  const float f = (t4 - static_cast<float>(q) - 0.5f) * 1.5707963268f, f2 = f * f;
  const float sf = f * (1 - f2 * (1.0f / 6 - f2 * (1.0f / 120 - f2 * (1.0f / 5040 -
                                                                     f2 * (1.0f / 362880)))));
  const float cf = 1 - f2 * (0.5f - f2 * (1.0f / 24 - f2 * (1.0f / 720 - f2 * (1.0f / 40320))));
  constexpr float h = 0.70710678f;  // cos and sin of the midpoints are ±√½
  const float ca = (q == 0 || q == 3) ? h : -h, sa = q < 2 ? h : -h;
  c = ca * cf - sa * sf;
  s = sa * cf + ca * sf;
}

// n standard normal numbers into buf by the Box–Muller transform of uniform pairs from hashed
// counters, two per pair (the first half of buf and the second): no generator state in the loop,
// so it vectorizes. The uniforms have 24 bits: u1 in (0, 1], so |z| ≤ 5.77 (a normal exceeds it
// with probability 8e-9). One 64-bit draw of rng picks the counters.
void fill_gauss(float* buf, int64_t n, Rng& rng) {
  const uint64_t draw = rng.next();
  const uint32_t base = static_cast<uint32_t>(draw), key = static_cast<uint32_t>(draw >> 32);
  const int64_t half = n / 2;
  float* __restrict lo = buf;
  float* __restrict hi = buf + half;
  auto pair = [base, key](int64_t i, float& z1, float& z2) {
    const uint32_t c = base + 2 * static_cast<uint32_t>(i);
    const uint32_t h1 = mix32(c ^ key), h2 = mix32((c + 1) ^ key);
    const float u1 = static_cast<float>((h1 >> 8) + 1) * (1.0f / 16777216.0f);
    const float u2 = static_cast<float>(h2 >> 8) * (1.0f / 16777216.0f);
    const float r = std::sqrt(-2 * log_unit(u1));
    float c2, s2;
    cos_sin_turn(u2, c2, s2);
    z1 = r * c2;
    z2 = r * s2;
  };
  for (int64_t i = 0; i < half; ++i) pair(i, lo[i], hi[i]);
  if (n % 2) {
    float spare;
    pair(half, buf[n - 1], spare);
  }
}

// Gaussian noise into buf[0, n): fresh, or picked at random from run r's fixed list (as
// AIHWKit's CPU simulator draws it)
void fill_noise(float* buf, int64_t n, Rng& rng, const float* list, int64_t size, int64_t r) {
  Rng local = rng;  // a copy the compiler may keep in registers (buf cannot alias it)
  if (list == nullptr) {
    fill_gauss(buf, n, local);
  } else {
    const float* own = list + r * size;
    for (int64_t i = 0; i < n; ++i) buf[i] = own[local.below(size)];
  }
  rng = local;
}

// the ADC side of one pass of one sample: y (m outputs of the matrix product) gets weight noise
// (w_noise·|x|·ξ) and output noise, is quantized and clipped; returns whether an output fell
// outside the bound before clipping. noise: 2m numbers (as needed) from fill_noise.
bool finish_row(float* __restrict y, int64_t m, float x_norm, const PassParams& io,
                const float* __restrict noise) {
  // the settings in locals: read through the reference, each store to y might change them (as
  // far as the compiler knows), which keeps the loops scalar
  const float out_noise = io.out_noise, out_step = io.out_step, bound = io.out_bound;
  if (io.w_noise > 0) {
    const float a = io.w_noise * x_norm;
    for (int64_t i = 0; i < m; ++i) y[i] += a * noise[i];
    noise += m;
  }
  if (out_noise > 0)
    for (int64_t i = 0; i < m; ++i) y[i] += out_noise * noise[i];
  if (out_step > 0)
    for (int64_t i = 0; i < m; ++i) y[i] = quantize(y[i], out_step);
  // which outputs fall outside the bound, as an OR of comparisons (a max over floats would not
  // vectorize), then the clip
  int over = 0;
  if (io.test_negative)
    for (int64_t i = 0; i < m; ++i) over |= (y[i] > bound) | (y[i] < -bound);
  else
    for (int64_t i = 0; i < m; ++i) over |= y[i] > bound;
  for (int64_t i = 0; i < m; ++i) y[i] = std::min(std::max(y[i], -bound), bound);
  return over != 0;
}

// the DAC: x / divisor / bm onto the input grid, clipped (the operations in torch's order: the
// same roundings); returns |x_q| (needed for weight noise)
float dac_row(const float* __restrict x, float* __restrict xq, int64_t k, float divisor,
              float bm, const PassParams& io) {
  const float step = io.inp_step, bound = io.inp_bound;  // in locals, as in finish_row
  for (int64_t j = 0; j < k; ++j) xq[j] = x[j] / divisor;
  if (bm != 1.0f)
    for (int64_t j = 0; j < k; ++j) xq[j] /= bm;
  if (step > 0)
    for (int64_t j = 0; j < k; ++j) xq[j] = quantize(xq[j], step);
  for (int64_t j = 0; j < k; ++j) xq[j] = std::min(std::max(xq[j], -bound), bound);
  if (io.w_noise <= 0) return 0.0f;
  float norm = 0;
  for (int64_t j = 0; j < k; ++j) norm += xq[j] * xq[j];
  return std::sqrt(norm);
}

// the stochastic pulse trains of one sample (AIHWKit's update with bit-length and update
// management): bl slots; x_j fires in a slot with probability min(|x_j|·scale_x, 1), d_i with
// min(|d_i|·scale_d, 1), so the expected coincidence count bl·p_j·q_i is lr·|x_j d_i|/dw_min up to
// desired_bl pulses per sample. False where the sample updates nothing (x or d all zero).
struct Train {
  double bl, scale_x, scale_d;
};
bool sample_train(const float* xr, int64_t K, const float* dr, int64_t O, double lr_dw,
                  int64_t desired_bl, bool bl_management, bool update_management,
                  double um_grad_scale, Train& out) {
  const float x_max_f = max_abs(xr, K), d_max_f = max_abs(dr, O);
  if (x_max_f == 0 || d_max_f == 0) return false;
  const double x_max = x_max_f;
  double d_max = d_max_f, bl = static_cast<double>(desired_bl);
  if (bl_management) {
    const double k = lr_dw * x_max * d_max;
    bl = std::min(std::max(std::ceil(k), 1.0), static_cast<double>(desired_bl));
    d_max *= std::min(desired_bl / k, 1.0);
  }
  const double base = lr_dw / bl;
  double scale_x = std::sqrt(base), scale_d = std::sqrt(base);
  if (update_management) {
    scale_x = std::sqrt(base * d_max / x_max);
    scale_d = std::sqrt(base * x_max / d_max);
  }
  out = Train{bl, scale_x, scale_d * um_grad_scale};
  return true;
}

// the array line each input drives: lines[k], or k when lines is empty (then K == L)
std::vector<int64_t> line_map(const torch::Tensor& lines, int64_t K, int64_t L, const char* who) {
  std::vector<int64_t> line_of(K);
  if (lines.numel() == 0) {
    TORCH_CHECK(K == L, who, ": x must drive every line");
    for (int64_t k = 0; k < K; ++k) line_of[k] = k;
  } else {
    auto lc = lines.to(torch::kInt64).contiguous();
    TORCH_CHECK(lc.numel() == K, who, ": one line per input");
    for (int64_t k = 0; k < K; ++k) line_of[k] = lc.data_ptr<int64_t>()[k];
  }
  return line_of;
}

// how many of the n values are non-zero
inline int64_t count_nonzero(const float* v, int64_t n) {
  int64_t count = 0;
  for (int64_t e = 0; e < n; ++e) count += v[e] != 0;
  return count;
}

// the moment update's trains of one sample (see moment_update), from z, a standard normal draw.
// Input line (value x, scale sx): returns its pulse probability p, and a = A, the deviation of its
// pulse count from the mean bl·p (0 where p is 0 or 1).
inline float input_train(float x, float sx, float bl, float z, float& a) {
  const float p = std::min(std::abs(x) * sx, 1.0f);
  a = z * std::sqrt(bl * p * (1 - p));
  return p;
}
// Output line (value d, scale sd): returns its pulse probability q, with its count's variance
// bl·q(1 − q) and the count bl·q + B (0 where q is 0).
inline float output_train(float d, float sd, float bl, float z, float& q_var, float& count) {
  const float q = std::min(std::abs(d) * sd, 1.0f);
  q_var = q * (1 - q) * bl;
  count = q * bl + z * std::sqrt(q_var);
  return q;
}

// One sample's rows for the moment update's matrix products (see moment_update), from its draws
// z. Over its K inputs: p and A (total), times s_x = sign(x) (signed), and p(1 − p) and times
// s_x; live[j] becomes > 0 where the sample drives line j. (Pointers that cannot alias, so that
// the loops vectorize.)
void input_rows(const float* __restrict x, const float* __restrict z, int64_t K, float sx,
                float bl, float* __restrict pt, float* __restrict at, float* __restrict ps,
                float* __restrict as, float* __restrict vt, float* __restrict vs,
                float* __restrict live) {
  for (int64_t j = 0; j < K; ++j) {
    float ab;
    const float p = input_train(x[j], sx, bl, z[j], ab), s = x[j] > 0 ? 1.0f : -1.0f;
    pt[j] = p, at[j] = ab, ps[j] = s * p, as[j] = s * ab;
    vt[j] = p * (1 - p), vs[j] = s * vt[j];
    live[j] = std::max(live[j], p);
  }
}
// ... over its O outputs: bl·q + B and q (total), times s_d = sign(d) (signed), and bl·q(1 − q)
// and times s_d
void output_rows(const float* __restrict d, const float* __restrict z, int64_t O, float sd,
                 float bl, float* __restrict qt, float* __restrict qq, float* __restrict qs,
                 float* __restrict qqs, float* __restrict wt, float* __restrict ws) {
  for (int64_t i = 0; i < O; ++i) {
    float q_var, qb;
    const float q = output_train(d[i], sd, bl, z[i], q_var, qb);
    const float s = d[i] > 0 ? 1.0f : -1.0f;
    qt[i] = qb, qq[i] = q, qs[i] = s * qb, qqs[i] = s * q, wt[i] = q_var, ws[i] = s * q_var;
  }
}
// One sample's output rows for the moment update line by line (see moment_update): bl·q + B, q
// and bl·q(1 − q) where d > 0 (pos_*), then the same where d < 0 (neg_*), each a row of O
void output_line_rows(const float* __restrict d, const float* __restrict z, int64_t O, float sd,
                      float bl, float* __restrict pos_n, float* __restrict pos_q,
                      float* __restrict pos_v, float* __restrict neg_n, float* __restrict neg_q,
                      float* __restrict neg_v) {
  for (int64_t i = 0; i < O; ++i) {
    float q_var, qb;
    const float q = output_train(d[i], sd, bl, z[i], q_var, qb);
    const bool pos = d[i] > 0;
    pos_n[i] = pos ? qb : 0.0f, pos_q[i] = pos ? q : 0.0f, pos_v[i] = pos ? q_var : 0.0f;
    neg_n[i] = pos ? 0.0f : qb, neg_q[i] = pos ? 0.0f : q, neg_v[i] = pos ? 0.0f : q_var;
  }
}

// below this |r| the gain (1 − e^{-r})/r is taken from its series (1 − e^{-r} would cancel)
constexpr float kSmallRate = 0.05f;

// the gain's series, to within r^5/720
inline float small_gain(float r) {
  return 1 - r * (0.5f - r * (1.0f / 6 - r * (1.0f / 24 - r * (1.0f / 120))));
}

// e^{-r} and the gain (1 − e^{-r})/r of the soft-bounds closed form, branch-free so that the loop
// over a line vectorizes: 2^t = 2^k·2^f with k the nearest integer and |f| ≤ 1/2, 2^f by its
// Taylor polynomial of degree 7 (relative error < 1e-8); below kSmallRate the gain by its series.
inline void decay_gain(float r, float& decay, float& gain) {
  const float t = std::min(std::max(-r * 1.4426950409f, -125.0f), 125.0f);
  const float kf = (t + kRoundMagic) - kRoundMagic;  // round to nearest
  const float f = (t - kf) * 0.6931471806f;  // 2^(t−k) = e^f
  float p = 1.0f / 5040;
  p = p * f + 1.0f / 720;
  p = p * f + 1.0f / 120;
  p = p * f + 1.0f / 24;
  p = p * f + 1.0f / 6;
  p = p * f + 0.5f;
  p = p * f + 1.0f;
  p = p * f + 1.0f;
  const int32_t bits = (static_cast<int32_t>(kf) + 127) << 23;
  float two_k;
  std::memcpy(&two_k, &bits, sizeof two_k);
  decay = p * two_k;
  const bool small = std::abs(r) < kSmallRate;
  gain = small ? small_gain(r) : (1 - decay) / (small ? 1.0f : r);
}

// a sample that drives an input line: its pulse probability p and train deviation A on that line,
// p(1 − p), and the rows (see moment_update) of its down and up counts' factors
struct Drive {
  float p, a, p_var;
  const float *down, *up;
};

// the coincidence counts of the devices i0 … i0 + m − 1 of one input line, summed over the samples
// that drive it: in sample b, c = p·(bl·q + B) + A·q plus an independent part of variance
// p(1 − p)·bl·q(1 − q), for the down pulses (n_down, v_down) and the up pulses (n_up, v_up), each
// summed in the samples' order. Sixteen devices at a time (m == 16) keep their sums in vector
// registers over all the samples (GCC and Clang); otherwise the sums are updated in memory.
constexpr int64_t kBlock = 16;
// from this many samples on, a mini-batch whose inputs are mostly non-zero has its line sums
// taken by matrix products (see moment_update)
constexpr int64_t kMatmulSamples = 32;
#if defined(__GNUC__)
typedef float Vec8 __attribute__((vector_size(32)));  // eight floats, loaded and stored unaligned
inline Vec8 load8(const float* p) {
  Vec8 v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
inline void store8(float* p, Vec8 v) { std::memcpy(p, &v, sizeof v); }
#endif
inline void line_counts(const Drive* drives, int64_t used, int64_t O, int64_t i0, int64_t m,
                        float* __restrict n_down, float* __restrict v_down,
                        float* __restrict n_up, float* __restrict v_up) {
#if defined(__GNUC__)
  if (m == kBlock) {
    // per side (down, up): the p-terms and the A-terms in sums of their own, so that each sum
    // takes one fused multiply-add per sample and none waits on another in the same sample, and
    // the variance's; 16 outputs in two registers each
    struct Sums {
      Vec8 p0{}, p1{}, a0{}, a1{}, v0{}, v1{};
    };
    const auto add = [O](Sums& z, const float* row, const Drive& s) {
      z.p0 += s.p * load8(row), z.p1 += s.p * load8(row + 8);
      z.a0 += s.a * load8(row + O), z.a1 += s.a * load8(row + O + 8);
      z.v0 += s.p_var * load8(row + 2 * O), z.v1 += s.p_var * load8(row + 2 * O + 8);
    };
    const auto put = [](const Sums& z, float* n, float* v) {
      store8(n, z.p0 + z.a0), store8(n + 8, z.p1 + z.a1);
      store8(v, z.v0), store8(v + 8, z.v1);
    };
    Sums down, up;
    for (int64_t u = 0; u < used; ++u) {
      add(down, drives[u].down + i0, drives[u]);
      add(up, drives[u].up + i0, drives[u]);
    }
    put(down, n_down + i0, v_down + i0);
    put(up, n_up + i0, v_up + i0);
    return;
  }
#endif
  for (int64_t i = i0; i < i0 + m; ++i) n_down[i] = v_down[i] = n_up[i] = v_up[i] = 0;
  for (int64_t u = 0; u < used; ++u) {
    const Drive& s = drives[u];
    const float *__restrict down = s.down, *__restrict up = s.up;
    for (int64_t i = i0; i < i0 + m; ++i) {
      n_down[i] += s.p * down[i] + s.a * down[O + i];
      v_down[i] += s.p_var * down[2 * O + i];
      n_up[i] += s.p * up[i] + s.a * up[O + i];
      v_up[i] += s.p_var * up[2 * O + i];
    }
  }
}

// how many coincidences ahead of its pulse a device's weight and parameters are fetched
constexpr size_t kAhead = 16;
inline void fetch(const float* W, const float* P, int64_t e) {
  __builtin_prefetch(W + e, 1);
  __builtin_prefetch(P + 4 * e);
}

// one slot of a pulse train: which of the n live lines (indices idx, thresholds thr from
// live_lines) fire, written to fired; returns how many. Two lines per 64-bit draw, and no branch
// on the coin: the index is written anyway and the count moves on only where it fired.
inline int64_t fire(Rng& gen, const int32_t* idx, const int64_t* thr, int64_t n, int32_t* fired) {
  int64_t m = 0, a = 0;
  for (; a + 1 < n; a += 2) {
    const uint64_t v = gen.next();
    fired[m] = idx[a];
    m += static_cast<int64_t>(v & 0xFFFFFFFFULL) < thr[a];
    fired[m] = idx[a + 1];
    m += static_cast<int64_t>(v >> 32) < thr[a + 1];
  }
  if (a < n) {
    fired[m] = idx[a];
    m += static_cast<int64_t>(gen.next() >> 32) < thr[a];
  }
  return m;
}

// the fewest outputs for which io_pass sums over the non-zero inputs only (sparse_rows)
constexpr int64_t kSparseOutputs = 64;
// y (N, m, zeroed) += x (N, k) @ W (k, m) over the non-zero x, line by line: each line's weights
// are read once for a block of samples (whose outputs stay in cache), not once per sample
void sparse_rows(const float* x, int64_t N, int64_t k, const float* W, int64_t m, float* y) {
  constexpr int64_t kBlock = 32;
  for (int64_t n0 = 0; n0 < N; n0 += kBlock) {
    const int64_t n1 = std::min(N, n0 + kBlock);
    for (int64_t j = 0; j < k; ++j) {
      const float* w = W + j * m;
      for (int64_t n = n0; n < n1; ++n) {
        const float v = x[n * k + j];
        if (v == 0) continue;
        float* out = y + n * m;
        for (int64_t i = 0; i < m; ++i) out[i] += v * w[i];
      }
    }
  }
}

// one line of the moment update: its devices (weights and the six parameter planes), its counts'
// mean (nu, nd) and variance (vu, vd), up and down, and its noise
struct MomentLine {
  float* w;
  const float *s_up, *s_down, *b_max, *b_min, *c_up, *c_down;
  const float *nu, *nd, *vu, *vd;
  float c2c_var;
  uint32_t key, seed;
};

// the devices of a line after their counts: the soft-bounds closed form at the mean counts (with
// the line-shared noise), then zero-mean noise of the rest of the variance and of the pulses'
// cycle-to-cycle noise, then the clip. kSmall: every rate is below kSmallRate, so the gain is its
// series and e^{-r} = 1 − r·gain (to within r^6/720), without the exponential.
template <bool kSmall>
void settle(const MomentLine& l, int64_t O) {
  float* __restrict wr = l.w;
  const float *__restrict su = l.s_up, *__restrict sdn = l.s_down;
  const float *__restrict hi = l.b_max, *__restrict lo = l.b_min;
  const float *__restrict cu = l.c_up, *__restrict cd = l.c_down;
  const float *__restrict nu = l.nu, *__restrict nd = l.nd, *__restrict vu = l.vu,
              *__restrict vd = l.vd;
  for (int64_t i = 0; i < O; ++i) {
    const float r = nu[i] * cu[i] + nd[i] * cd[i];
    float decay, gain;
    if (kSmall) {
      gain = small_gain(r);
      decay = 1 - r * gain;
    } else {
      decay_gain(r, decay, gain);
    }
    float v = wr[i] * decay + gain * (nu[i] * su[i] - nd[i] * sdn[i]);
    // the rest of the variance, through the slope of one pulse at the new weight
    const float a_up = su[i] - cu[i] * v, a_down = sdn[i] + cd[i] * v;
    const float var = a_up * a_up * vu[i] + a_down * a_down * vd[i] +
                      l.c2c_var * (su[i] * su[i] * std::max(nu[i], 0.0f) +
                                   sdn[i] * sdn[i] * std::max(nd[i], 0.0f));
    // zero-mean, unit-variance noise: uniform from 24 hashed bits (only its mean and variance
    // matter here)
    const uint32_t h = mix32(mix32(l.key + static_cast<uint32_t>(i)) ^ l.seed);
    const float u = (static_cast<float>(h >> 8) + 0.5f) * (1.0f / 16777216.0f) - 0.5f;
    v += std::sqrt(std::max(var, 0.0f)) * (u * 3.4641016151f);
    wr[i] = std::min(std::max(v, lo[i]), hi[i]);
  }
}

}  // namespace

// y = x @ wt through the analog periphery. wt (R, K, M) (any strides), x (R, N, K) → (R, N, M).
torch::Tensor io_pass(torch::Tensor wt, torch::Tensor x, double inp_bound, double inp_step,
                      double out_bound, double out_step, double out_noise, double w_noise,
                      bool abs_max, bool iterative, double bm_limit, bool test_negative,
                      c10::optional<torch::Tensor> noise_list) {
  TORCH_CHECK(x.dim() == 3 && wt.dim() == 3 && x.size(0) == wt.size(0) && x.size(2) == wt.size(1),
              "io_pass: shapes");
  TORCH_CHECK(x.scalar_type() == torch::kFloat32 && wt.scalar_type() == torch::kFloat32,
              "io_pass: float32 only");
  x = x.contiguous();
  const int64_t R = x.size(0), N = x.size(1), K = x.size(2), M = wt.size(2);
  const PassParams io{static_cast<float>(inp_bound), static_cast<float>(inp_step),
                      static_cast<float>(out_bound), static_cast<float>(out_step),
                      static_cast<float>(out_noise), static_cast<float>(w_noise), test_negative};
  torch::Tensor list;
  if (noise_list.has_value() && noise_list->defined() && noise_list->numel() > 0)
    list = noise_list->contiguous();
  Rng rng(torch_seed());
  const float* list_p = list.defined() ? list.data_ptr<float>() : nullptr;
  const int64_t list_size = list.defined() ? list.size(1) : 0;
  const int64_t per_row = ((io.w_noise > 0) + (io.out_noise > 0)) * M;
  std::vector<float> noise(per_row);

  auto xq = torch::empty_like(x);
  std::vector<float> scale(R * N, 1.0f), norm(R * N);
  const float* xp = x.data_ptr<float>();
  float* xqp = xq.data_ptr<float>();
  for (int64_t s = 0; s < R * N; ++s) {
    const float* row = xp + s * K;
    if (abs_max) scale[s] = max_abs(row, K);
    norm[s] = dac_row(row, xqp + s * K, K, scale[s] > 0 ? scale[s] : 1.0f, 1.0f, io);
  }
  // the matrix product: a sum over the non-zero inputs only when they are few (MNIST images
  // after the DAC: ~20 % of the pixels), each input's weights are contiguous and long enough
  // (64 outputs or more) for a skipped input to save more than its test costs (a convolution's
  // 16 channels do not: its patches go to torch's product), else torch's
  const bool can_skip = wt.stride(2) == 1 && wt.stride(1) == M && M >= kSparseOutputs;
  const int64_t nonzero = can_skip ? count_nonzero(xqp, R * N * K) : 0;
  torch::Tensor y;
  if (can_skip && nonzero * 4 < R * N * K) {
    y = torch::zeros({R, N, M}, x.options());
    const float* W = wt.data_ptr<float>();
    float* out = y.data_ptr<float>();
    for (int64_t r = 0; r < R; ++r)
      sparse_rows(xqp + r * N * K, N, K, W + r * wt.stride(0), M, out + r * N * M);
  } else {
    y = torch::matmul(xq, wt).contiguous();
  }
  float* yp = y.data_ptr<float>();
  std::vector<float> redo_x(K);
  for (int64_t s = 0; s < R * N; ++s) {
    const int64_t r = s / N;
    float* yrow = yp + s * M;
    fill_noise(noise.data(), per_row, rng, list_p, list_size, r);
    bool over = finish_row(yrow, M, norm[s], io, noise.data());
    if (iterative) {
      float bm = 1.0f;
      const float divisor = scale[s] > 0 ? scale[s] : 1.0f;
      while (over && bm <= bm_limit) {
        bm *= 2;
        float nrm = dac_row(xp + s * K, redo_x.data(), K, divisor, bm, io);
        torch::Tensor yr;
        if (can_skip) {
          yr = torch::zeros({M}, x.options());
          sparse_rows(redo_x.data(), 1, K, wt.data_ptr<float>() + r * wt.stride(0), M,
                      yr.data_ptr<float>());
        } else {
          auto xr = torch::from_blob(redo_x.data(), {1, K}, torch::kFloat32);
          yr = torch::matmul(xr, wt[r]).contiguous();
        }
        float* ynew = yr.data_ptr<float>();
        fill_noise(noise.data(), per_row, rng, list_p, list_size, r);
        over = finish_row(ynew, M, nrm, io, noise.data());
        for (int64_t i = 0; i < M; ++i) yrow[i] = ynew[i] * bm;
      }
    }
    if (abs_max)
      for (int64_t i = 0; i < M; ++i) yrow[i] *= scale[s];
  }
  return y;
}

// what both updates take, checked: the weights w (R, L, O), the device parameters, x (R, N, K)
// and d (R, N, O) made contiguous, dw_min and its std (float32, one per run), and the line each
// input drives
struct UpdateArgs {
  torch::Tensor x, d, dw_min, dw_std;
  int64_t R, L, O, N, K;
  std::vector<int64_t> line_of;
};
UpdateArgs update_args(const char* who, const torch::Tensor& w, const torch::Tensor& params,
                       bool planes, const torch::Tensor& x, const torch::Tensor& d,
                       const torch::Tensor& dw_min, const torch::Tensor& dw_std,
                       const torch::Tensor& lines) {
  TORCH_CHECK(w.is_contiguous() && w.scalar_type() == torch::kFloat32 && w.dim() == 3, who,
              ": the weights must be contiguous float32 (R, lines, outputs)");
  // the device parameters: six planes (6, R, L, O), or four per device (R, L, O, 4)
  const int64_t R = w.size(0), L = w.size(1), O = w.size(2);
  const std::vector<int64_t> shape =
      planes ? std::vector<int64_t>{6, R, L, O} : std::vector<int64_t>{R, L, O, 4};
  TORCH_CHECK(params.is_contiguous() && params.scalar_type() == torch::kFloat32 &&
                  params.sizes() == c10::IntArrayRef(shape),
              who, ": the device parameters must be contiguous float32 ",
              planes ? "(6, R, lines, outputs)" : "(R, lines, outputs, 4)");
  TORCH_CHECK(dw_min.scalar_type() == torch::kFloat32 && dw_std.scalar_type() == torch::kFloat32,
              who, ": dw_min and its std must be float32");
  TORCH_CHECK(x.dim() == 3 && d.dim() == 3, who, ": x and d must be (R, N, ·)");
  UpdateArgs a{x.contiguous(), d.contiguous(), dw_min.contiguous(), dw_std.contiguous(),
               R, L, O, x.size(1), x.size(2), {}};
  TORCH_CHECK(d.size(2) == a.O && d.size(1) == a.N && x.size(0) == a.R && d.size(0) == a.R, who,
              ": shapes");
  a.line_of = line_map(lines, a.K, a.L, who);
  return a;
}

// The pulsed update W ← W − lr·Σ_b d_b x_bᵀ of an input-major array w (R, L, O), in place; params
// (R, L, O, 4) holds each device's s_up, s_down, b_max, b_min side by side. x (R, N, K) drives
// the lines `lines` (K of them; all L in order if empty), d (R, N, O).
void pulse_update(torch::Tensor w, torch::Tensor params, torch::Tensor dw_min,
                  torch::Tensor dw_std, torch::Tensor x, torch::Tensor d, double lr,
                  int64_t desired_bl, bool bl_management, bool update_management,
                  double um_grad_scale, torch::Tensor lines) {
  const UpdateArgs a = update_args("pulse_update", w, params, false, x, d, dw_min, dw_std, lines);
  const int64_t R = a.R, O = a.O, N = a.N, K = a.K, L = a.L;
  const std::vector<int64_t>& line_of = a.line_of;
  const torch::Tensor &dwm = a.dw_min, &dws = a.dw_std;
  float* W = w.data_ptr<float>();
  const float* P = params.data_ptr<float>();  // per device: s_up, s_down, b_max, b_min
  const float *xp = a.x.data_ptr<float>(), *dp = a.d.data_ptr<float>();
  Rng rng(torch_seed());

  std::vector<int32_t> in_idx(K), out_idx(O), in_fired(K), out_fired(O);
  std::vector<int64_t> in_p(K), out_q(O);  // per live line: its threshold (live_lines)
  std::vector<int64_t> pairs;  // one slot's coincidences: device index · 2 + (down pulse)
  std::vector<float> gauss;
  // the trains' draws from a generator of their own, which the compiler keeps in registers (the
  // noise's generator is passed around, so it lives in memory)
  Rng trains(torch_seed());
  for (int64_t r = 0; r < R; ++r) {
    const double lr_dw = lr / static_cast<double>(dwm.data_ptr<float>()[r]);
    const float sigma = dws.data_ptr<float>()[r];
    const int64_t base_off = r * L * O;
    for (int64_t n = 0; n < N; ++n) {
      const float* xr = xp + (r * N + n) * K;
      const float* dr = dp + (r * N + n) * O;
      Train train;
      if (!sample_train(xr, K, dr, O, lr_dw, desired_bl, bl_management, update_management,
                        um_grad_scale, train))
        continue;
      const int64_t n_in = live_lines(xr, K, static_cast<float>(train.scale_x), in_idx.data(),
                                      in_p.data());
      const int64_t n_out = live_lines(dr, O, static_cast<float>(train.scale_d), out_idx.data(),
                                       out_q.data());
      // the side with fewer lines is drawn first; the other only in slots where it fired
      const bool outputs_first = n_out <= n_in;
      const int32_t* first_idx = outputs_first ? out_idx.data() : in_idx.data();
      const int64_t* first_p = outputs_first ? out_q.data() : in_p.data();
      const int64_t n_first = outputs_first ? n_out : n_in;
      const int32_t* second_idx = outputs_first ? in_idx.data() : out_idx.data();
      const int64_t* second_p = outputs_first ? in_p.data() : out_q.data();
      const int64_t n_second = outputs_first ? n_in : n_out;
      int32_t* first_fired = outputs_first ? out_fired.data() : in_fired.data();
      int32_t* second_fired = outputs_first ? in_fired.data() : out_fired.data();
      const int64_t slots = static_cast<int64_t>(train.bl);
      for (int64_t t = 0; t < slots; ++t) {
        const int64_t n_first_fired = fire(trains, first_idx, first_p, n_first, first_fired);
        if (n_first_fired == 0) continue;
        const int64_t n_second_fired = fire(trains, second_idx, second_p, n_second, second_fired);
        const int64_t n_in_fired = outputs_first ? n_second_fired : n_first_fired;
        const int64_t n_out_fired = outputs_first ? n_first_fired : n_second_fired;
        // this slot's coincidences, every fired input with every fired output: listed first, so
        // that each device's cache lines can be fetched well ahead of its pulse (they are
        // scattered over the array; waiting for them was most of the time)
        const size_t count = static_cast<size_t>(n_in_fired * n_out_fired);
        if (pairs.size() < count) pairs.resize(count);
        int64_t* pair = pairs.data();
        for (int64_t a = 0; a < n_in_fired; ++a) {
          const int32_t j = in_fired[a];
          const bool x_pos = xr[j] > 0;
          const int64_t row = base_off + line_of[j] * O;
          // W ← W − lr·d xᵀ: a down pulse where x_j·d_i > 0
          for (int64_t c = 0; c < n_out_fired; ++c) {
            const int32_t i = out_fired[c];
            *pair++ = ((row + i) << 1) | (x_pos == (dr[i] > 0));
          }
        }
        if (sigma > 0) {  // their cycle-to-cycle noise, drawn apart (the generator in registers)
          if (gauss.size() < count) gauss.resize(count);
          fill_noise(gauss.data(), static_cast<int64_t>(count), rng, nullptr, 0, 0);
        }
        for (size_t k = 0; k < std::min(count, kAhead); ++k) fetch(W, P, pairs[k] >> 1);
        for (size_t k = 0; k < count; ++k) {
          if (k + kAhead < count) fetch(W, P, pairs[k + kAhead] >> 1);
          const int64_t e = pairs[k] >> 1;
          const bool down = pairs[k] & 1;
          const float* dev = P + 4 * e;  // one cache line holds the device's four numbers
          // selects, not branches: the sign is a coin flip to the branch predictor
          const float step = down ? dev[1] : dev[0], bound = down ? dev[3] : dev[2];
          const float v = W[e];
          float moved = v + (down ? -step : step) * (1.0f - v / bound);
          if (sigma > 0) moved += sigma * step * gauss[k];
          W[e] = std::min(std::max(moved, dev[3]), dev[2]);
        }
      }
    }
  }
}

// The moment-matched update of an input-major array w (R, L, O), in place: each device moves by
// the soft-bounds closed form at its coincidence counts (mean and line-shared noise), then by
// zero-mean noise of the rest of the counts' variance and of the pulses' cycle-to-cycle noise
// (tile.py, _moment_update, has the derivation). devices (6, R, L, O) holds s_up, s_down, b_max,
// b_min, s_up/b_max and s_down/|b_min|. x (R, N, K) drives the lines `lines` (all if empty), d
// (R, N, O). Lines whose input is zero throughout get no pulse and are not touched. A line's
// counts are summed over its samples in one of two ways:
//   - line by line, over the samples where its input is non-zero (an MNIST image's pixels: most
//     are zero);
//   - for many samples whose inputs are mostly non-zero (a convolution's patches): all lines at
//     once by matrix products (torch's), of the counts' total and of their sum signed by
//     s = sign(x·d), +1 for a down pulse and −1 for an up one; down = (total + signed)/2 and
//     up = (total − signed)/2.
void moment_update(torch::Tensor w, torch::Tensor devices, torch::Tensor dw_min,
                   torch::Tensor dw_std, torch::Tensor x, torch::Tensor d, double lr,
                   int64_t desired_bl, bool bl_management, bool update_management,
                   double um_grad_scale, torch::Tensor lines) {
  const UpdateArgs a = update_args("moment_update", w, devices, true, x, d, dw_min, dw_std,
                                    lines);
  const int64_t R = a.R, O = a.O, N = a.N, K = a.K, L = a.L;
  const std::vector<int64_t>& line_of = a.line_of;
  const torch::Tensor &dwm = a.dw_min, &dws = a.dw_std;
  const int64_t plane = R * L * O;
  float* W = w.data_ptr<float>();
  const float* S_up = devices.data_ptr<float>();
  const float *S_down = S_up + plane, *B_max = S_up + 2 * plane, *B_min = S_up + 3 * plane;
  const float *C_up = S_up + 4 * plane, *C_down = S_up + 5 * plane;
  const float *xp = a.x.data_ptr<float>(), *dp = a.d.data_ptr<float>();
  const auto f32 = torch::TensorOptions().dtype(torch::kFloat32);
  Rng rng(torch_seed());

  // Line by line: per sample and output line, for the down (x_j·d_i > 0) and up counts: with q
  // the pulse probability, B the train's deviation from its mean count (Gaussian, shared by the
  // line), the counts' mean factor bl·q + B, q, and the variance factor bl·q(1 − q); for d_i > 0
  // and d_i < 0 apart (P, N), six rows of O per sample. Per input line and sample (line-major, so
  // that a line reads its samples in a row): the pulse probability p, signed as x, and A.
  std::vector<float> q_rows, p_line, a_line, normal(K + O);
  std::vector<float> n_up(O), n_down(O), v_up(O), v_down(O);
  std::vector<Drive> drives;
  // By matrix products: per sample, as rows over the inputs, p and A for the total (lhs[0]) and
  // times s_x = sign(x) for the signed sum (lhs[1]), and p(1 − p) likewise (lhs_var); as rows over
  // the outputs, bl·q + B and q, and times s_d = sign(d) (rhs), and bl·q(1 − q) likewise (rhs_var)
  torch::Tensor lhs, lhs_var, rhs, rhs_var;
  std::vector<float> line_live(K);  // > 0 where a sample drives the line
  for (int64_t r = 0; r < R; ++r) {
    const double lr_dw = lr / static_cast<double>(dwm.data_ptr<float>()[r]);
    const float sigma = dws.data_ptr<float>()[r], c2c_var = sigma * sigma;
    const int64_t base_off = r * L * O;
    const uint32_t seed_lo = static_cast<uint32_t>(rng.next()), seed_hi = rng.next32();
    const float* xs = xp + r * N * K;
    const bool by_matmul = N >= kMatmulSamples && 2 * count_nonzero(xs, N * K) >= N * K;
    float *lp = nullptr, *lv = nullptr, *rq = nullptr, *rv = nullptr;
    if (by_matmul) {
      if (!lhs.defined()) {
        lhs = torch::empty({2, 2 * N, K}, f32), lhs_var = torch::empty({2, N, K}, f32);
        rhs = torch::empty({2, 2 * N, O}, f32), rhs_var = torch::empty({2, N, O}, f32);
      }
      lp = lhs.data_ptr<float>(), lv = lhs_var.data_ptr<float>();
      rq = rhs.data_ptr<float>(), rv = rhs_var.data_ptr<float>();
      std::fill(line_live.begin(), line_live.end(), 0);
    } else if (q_rows.empty()) {
      q_rows.resize(N * 6 * O), p_line.resize(K * N), a_line.resize(K * N);
      drives.reserve(N);
    }
    for (int64_t n = 0; n < N; ++n) {
      const float* xr = xs + n * K;
      const float* dr = dp + (r * N + n) * O;
      Train train;
      const bool live = sample_train(xr, K, dr, O, lr_dw, desired_bl, bl_management,
                                     update_management, um_grad_scale, train);
      if (!live) {  // no pulse in this sample
        if (by_matmul) {
          for (int64_t row = 0; row < 4; ++row) std::fill_n(lp + (row * N + n) * K, K, 0.0f);
          for (int64_t row = 0; row < 2; ++row) std::fill_n(lv + (row * N + n) * K, K, 0.0f);
          for (int64_t row = 0; row < 4; ++row) std::fill_n(rq + (row * N + n) * O, O, 0.0f);
          for (int64_t row = 0; row < 2; ++row) std::fill_n(rv + (row * N + n) * O, O, 0.0f);
        } else {
          for (int64_t j = 0; j < K; ++j) p_line[j * N + n] = 0.0f;
        }
        continue;
      }
      const float bl = static_cast<float>(train.bl);
      const float sx = static_cast<float>(train.scale_x), sd = static_cast<float>(train.scale_d);
      fill_gauss(normal.data(), K + O, rng);  // the trains' deviations, standardized
      if (by_matmul) {
        input_rows(xr, normal.data(), K, sx, bl, lp + n * K, lp + (N + n) * K,
                   lp + (2 * N + n) * K, lp + (3 * N + n) * K, lv + n * K, lv + (N + n) * K,
                   line_live.data());
        output_rows(dr, normal.data() + K, O, sd, bl, rq + n * O, rq + (N + n) * O,
                    rq + (2 * N + n) * O, rq + (3 * N + n) * O, rv + n * O, rv + (N + n) * O);
        continue;
      }
      float *pn = p_line.data() + n, *an = a_line.data() + n;  // sample n of line j: [j·N]
      for (int64_t j = 0; j < K; ++j) {  // A_j: the input train's deviation, shared by its line
        const float p = input_train(xr[j], sx, bl, normal[j], an[j * N]);
        pn[j * N] = xr[j] > 0 ? p : -p;
      }
      float* qr = q_rows.data() + n * 6 * O;
      output_line_rows(dr, normal.data() + K, O, sd, bl, qr, qr + O, qr + 2 * O, qr + 3 * O,
                       qr + 4 * O, qr + 5 * O);
    }
    torch::Tensor sums, sums_var;  // by matrix products: (2, K, O), total and signed
    if (by_matmul) {
      sums = torch::bmm(lhs.transpose(1, 2), rhs).contiguous();
      sums_var = torch::bmm(lhs_var.transpose(1, 2), rhs_var).contiguous();
    }
    for (int64_t k = 0; k < K; ++k) {
      if (by_matmul) {
        if (line_live[k] == 0) continue;  // no pulse on this line
        const float *t = sums.data_ptr<float>() + k * O, *sg = t + K * O;
        const float *vt = sums_var.data_ptr<float>() + k * O, *vs = vt + K * O;
        for (int64_t i = 0; i < O; ++i) {
          n_down[i] = 0.5f * (t[i] + sg[i]), n_up[i] = 0.5f * (t[i] - sg[i]);
          v_down[i] = 0.5f * (vt[i] + vs[i]), v_up[i] = 0.5f * (vt[i] - vs[i]);
        }
      } else {
        const float *pk = p_line.data() + k * N, *ak = a_line.data() + k * N;
        drives.clear();  // the samples that drive this line
        for (int64_t n = 0; n < N; ++n) {
          if (pk[n] == 0) continue;
          const float p = std::abs(pk[n]);
          const float* qr = q_rows.data() + n * 6 * O;
          const bool x_pos = pk[n] > 0;  // down where d has x's sign
          drives.push_back(Drive{p, ak[n], p * (1 - p), qr + (x_pos ? 0 : 3 * O),
                                 qr + (x_pos ? 3 * O : 0)});
        }
        if (drives.empty()) continue;  // no pulse on this line
        const int64_t used = static_cast<int64_t>(drives.size());
        for (int64_t i0 = 0; i0 < O; i0 += kBlock)
          line_counts(drives.data(), used, O, i0, std::min(kBlock, O - i0), n_down.data(),
                      v_down.data(), n_up.data(), v_up.data());
      }
      const float *nu = n_up.data(), *nd = n_down.data(), *vu = v_up.data(), *vd = v_down.data();
      const int64_t row = base_off + line_of[k] * O;
      const MomentLine line{W + row, S_up + row, S_down + row, B_max + row, B_min + row,
                            C_up + row, C_down + row, nu, nd, vu, vd, c2c_var,
                            seed_lo + static_cast<uint32_t>(row), seed_hi};
      // a whole line of small rates (the usual case: a few pulses of a small step each) needs
      // no exponential
      int big = 0;
      for (int64_t i = 0; i < O; ++i)
        big |= std::abs(nu[i] * line.c_up[i] + nd[i] * line.c_down[i]) >= kSmallRate;
      if (big)
        settle<false>(line, O);
      else
        settle<true>(line, O);
    }
  }
}

// where |y| ≥ threshold (a bool tensor like y), or None where nowhere: the outputs at the ADC's
// bound, through which no error passes back
c10::optional<torch::Tensor> saturated(torch::Tensor y, double threshold) {
  y = y.contiguous();
  const float* p = y.data_ptr<float>();
  const float t = static_cast<float>(threshold);
  const int64_t n = y.numel();
  int64_t first = n;
  for (int64_t e = 0; e < n; ++e)
    if (std::abs(p[e]) >= t) {
      first = e;
      break;
    }
  if (first == n) return c10::nullopt;
  auto mask = torch::zeros(y.sizes(), y.options().dtype(torch::kBool));
  bool* q = mask.data_ptr<bool>();
  for (int64_t e = first; e < n; ++e) q[e] = std::abs(p[e]) >= t;
  return mask;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("saturated", &saturated, "mask of the outputs at the bound, or None");
  m.def("io_pass", &io_pass, "analog matrix-vector product with the IO periphery");
  m.def("pulse_update", &pulse_update, "pulse-by-pulse soft-bounds update, in place");
  m.def("moment_update", &moment_update, "moment-matched soft-bounds update, in place");
}
