// Scalar activation helpers shared by the elementwise kernels (prepended to them).

// erf: the rational approximation used by Eigen and XLA for f32 (absolute error < 2e-7 on
// the whole real line; |x| >= 4 is +-1 in f32). WGSL has no erf builtin, and the
// Abramowitz-Stegun 7.1.26 form (1.5e-7 absolute but with an exp) is less accurate near 0.
fn erf_f(a: f32) -> f32 {
  let x = clamp(a, -4.0, 4.0);
  let x2 = x * x;
  var p = x2 * -2.72614225801306e-10 + 2.77068142495902e-08;
  p = x2 * p + -2.10102402082508e-06;
  p = x2 * p + -5.69250639462346e-05;
  p = x2 * p + -7.34990630326855e-04;
  p = x2 * p + -2.95459980854025e-03;
  p = x2 * p + -1.60960333262415e-02;
  var q = x2 * -1.45660718464996e-05 + -2.13374055278905e-04;
  q = x2 * q + -1.68282697438203e-03;
  q = x2 * q + -7.37332916720468e-03;
  q = x2 * q + -1.42647390514189e-02;
  return x * p / q;
}

// tanh: clamped so that implementations computing it from exp() never see inf/inf.
fn tanh_f(x: f32) -> f32 {
  return tanh(clamp(x, -15.0, 15.0));
}

fn sigmoid_f(x: f32) -> f32 {
  return 1.0 / (1.0 + exp(-x));
}

fn gelu_f(x: f32) -> f32 {
  return 0.5 * x * (1.0 + erf_f(x * 0.7071067811865476));
}

fn gelu_tanh_f(x: f32) -> f32 {
  return 0.5 * x * (1.0 + tanh_f(0.7978845608028654 * (x + 0.044715 * x * x * x)));
}

// x^e for a scalar exponent, with torch's results for negative bases and integer
// exponents (WGSL pow is undefined for x < 0) and pow(x, 0) = 1.
fn pow_f(x: f32, e: f32) -> f32 {
  if (e == 0.0) { return 1.0; }
  if (e == 1.0) { return x; }
  if (e == 2.0) { return x * x; }
  if (e == 0.5) { return sqrt(x); }
  if (x >= 0.0) { return pow(x, e); }
  if (e != floor(e)) {
    var nan_bits = 0x7fc00000u; // a var: NaN may not appear in a const-expression
    return bitcast<f32>(nan_bits);
  }
  let r = pow(-x, e);
  if (e * 0.5 != floor(e * 0.5)) { return -r; }
  return r;
}
