"""Writes tests/data/dsrn_tf_reference.npz: an independent TensorFlow reference for models/dsrn.py.

Not run by the test suite (TensorFlow is no project dependency). It replays the authors' graph
(WeiHan3/dsrn model_recurrent_s2_u128_avg_t7.py: the edge list walked like _unroll_rnn, tf.layers
semantics via tf.nn ops: SAME 3x3 convs, VALID conv2d_transpose s x s stride s with (kh, kw, out, in)
kernels, VALID s x s average pooling, 1x1 `out`) with random weights stored under the TF variable names
that models/dsrn.py assumes (behind a "dsrn/" prefix), plus TF1 legacy
tf.compat.v1.image.resize_bicubic cases. Generated with tensorflow-cpu 2.21.0, CPU, float32:

    python tests/data/make_dsrn_tf_reference.py tests/data/dsrn_tf_reference.npz
"""
import numpy as np, tensorflow as tf, sys
rng = np.random.default_rng(0)
H, MID, T = 8, 4, 7
def conv(x, name, v, act=False, pad="SAME"):
    y = tf.nn.conv2d(x, v[name + "/kernel"], 1, pad) + v[name + "/bias"]
    return tf.nn.relu(y) if act else y
def build(x, s, v, P):
    def up(z):
        n, h, w = z.shape[0], z.shape[1], z.shape[2]
        return tf.nn.conv2d_transpose(z, v[P+"RecurrentNet/up/kernel"], [n, h*s, w*s, H], s, "VALID") + v[P+"RecurrentNet/up/bias"]
    def down(z): return tf.nn.avg_pool2d(z, s, s, "VALID")
    def link(sc):
        return lambda z: conv(conv(z, P+f"RecurrentNet/{sc}/conv1", v, True), P+f"RecurrentNet/{sc}/conv2", v)
    edges = [("s1","s1",lambda z:z,1),("s1","s1",link("s1s1"),1),("s1","s2",up,1),
             ("s2","s1",down,1),("s2","s2",lambda z:z,1),("s2","s2",link("s2s2"),1)]
    s1 = conv(conv(x, P+"InputNet/in_0", v, True), P+"InputNet/in_1", v, True)
    allt = [{} for _ in range(T)]; allt[0]["s1"] = s1
    for t in range(T):
        for name in list(allt[t]):
            z = tf.nn.relu(allt[t][name]); allt[t][name] = z
            for a, b, f, d in edges:
                if a == name and t + d < T:
                    o = f(z)
                    allt[t+d][b] = allt[t+d][b] + o if b in allt[t+d] else o
    outs = [allt[t]["s2"] for t in range(T) if "s2" in allt[t]]
    pre = tf.add_n(outs) / len(outs)
    res = conv(pre, P+"out", v, pad="VALID")
    base = tf.compat.v1.image.resize_bicubic(x, [x.shape[1]*s, x.shape[2]*s])
    return base + res, base, res
out = {}
P = "dsrn/"   # an outer prefix, as a lingvo export might add
for s, (h, w) in ((2, (5, 7)), (3, (6, 5)), (4, (4, 5))):
    v = {}
    def add(name, shape, fan):
        v[P+name+"/kernel"] = (rng.standard_normal(shape) * 1.2 / np.sqrt(fan)).astype(np.float32)
        v[P+name+"/bias"] = rng.uniform(-0.05, 0.05, shape[-2] if name.endswith("up") else shape[-1]).astype(np.float32)
    add("InputNet/in_0", (3,3,3,MID), 27); add("InputNet/in_1", (3,3,MID,H), 9*MID)
    for sc in ("s1s1","s2s2"):
        for c in ("conv1","conv2"): add(f"RecurrentNet/{sc}/{c}", (3,3,H,H), 9*H)
    add("RecurrentNet/up", (s,s,H,H), H)   # (kh, kw, out, in)
    add("out", (1,1,H,3), H)
    x = rng.random((1, h, w, 3), dtype=np.float32)
    sr, base, res = build(tf.constant(x), s, {k: tf.constant(a) for k, a in v.items()}, P)
    for k, a in v.items(): out[f"x{s}:{k}"] = a
    out[f"x{s}:@input"] = x; out[f"x{s}:@sr"] = sr.numpy(); out[f"x{s}:@bicubic"] = base.numpy()
# a larger bicubic-only case (odd sizes) for the TF1 legacy resize
for s in (2, 3, 4):
    xb = rng.random((1, 7, 6, 3), dtype=np.float32)
    out[f"bic{s}:@input"] = xb
    out[f"bic{s}:@output"] = tf.compat.v1.image.resize_bicubic(xb, [7*s, 6*s]).numpy()
np.savez_compressed(sys.argv[1], **out)
print(tf.__version__, {k: v.shape for k, v in out.items() if "@" in k})
