"""AttnGAN: text-to-image generation with word attention (Xu et al., CVPR 2018). Not an SR network.

Follows the authors' PyTorch code (taoxugit/AttnGAN `code/model.py`, `code/GlobalAttention.py`), i.e. the
paper's architecture figure: a DAMSM text encoder (bidirectional LSTM) gives word features e (D x T) and a sentence
feature; Conditioning Augmentation turns the sentence into c; F0 maps (z, c) to a 64x64 hidden state;
F1, F2 attend over words (Eq. 2) and refine to 128 and 256 px; G0..G2 are 3x3 conv + tanh heads.

Official hyper-parameters (`code/cfg/*.yml`, `miscc/config.py`): birds GF_DIM 32, Z_DIM 100,
CONDITION_DIM 100, R_NUM 2, EMBEDDING_DIM 256, BRANCH_NUM 3; coco GF_DIM 48, R_NUM 3 (rest the same).
DAMSM text encoder: Embedding(n_words, 300), LSTM hidden 128 per direction, 1 layer.

Registered architectures (all hyper-parameters read off tensor shapes):
  "attngan"       G_NET        forward(dict(z_code, sent_emb, word_embs, mask, eps)) -> dict(fake_imgs,
                               att_maps, mu, logvar); images in [-1, 1] (tanh). G_DCGAN (one image head
                               `img_net`, the AttnDCGAN release) loads as variant "attndcgan".
  "attngan-text"  RNN_ENCODER  forward(dict(captions, cap_lens)) -> dict(words_emb, sent_emb).
  "attngan-image" CNN_ENCODER  forward(images in [-1, 1]) -> dict(features, cnn_code); torchvision
                               Inception-v3 trunk re-written here with torchvision's module names.

Quirks kept on purpose (the released weights and the golden vectors depend on them):
- CA_NET draws eps ~ N(0, 1) on every call, even in eval. Here eps is an input; when it is absent it is
  drawn from the `generator` argument so runs are reproducible.
- The word-attention mask is laid out with `mask.repeat(queryL, 1)` against logits ordered
  (batch, pixel), so for batch > 1 pixel p of sample b is masked with row (b*queryL + p) % B of the mask,
  not row b. This is what the authors' code computes (golden `attngan_gnet_reduced.pt` needs it); a batch
  of one, or captions of equal length, is unaffected. `GNet(faithful_mask=False)` masks row b instead.
- BatchNorm layers hold `num_batches_tracked`; checkpoints saved before PyTorch 0.4.1 lack it, which a
  plain-dict strict load accepts (BatchNorm fills it in for version-less state dicts).

Text side: `tokenize` copies the dataset code (lower-case, RegexpTokenizer(r'\\w+'), ASCII only);
`load_vocab` reads the `wordtoix` table as JSON or text, because the authors' `captions.pickle` is a
pickle and is never unpickled here.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from .spec import Architecture, ModelSpec, StateDict, UnknownCheckpoint

# ----------------------------------------------------------------------------------------------
# Generator (G_NET)
# ----------------------------------------------------------------------------------------------


class GLU(nn.Module):
    """Gated linear unit over channels: first half * sigmoid(second half)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.size(1) // 2
        return x[:, :n] * torch.sigmoid(x[:, n:])


def _conv3x3(cin: int, cout: int) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, 1, 1, bias=False)


def _up_block(cin: int, cout: int) -> nn.Sequential:
    # indices 1 (conv) and 2 (BN) are the checkpoint's key names
    return nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), _conv3x3(cin, cout * 2),
                         nn.BatchNorm2d(cout * 2), GLU())


class ResBlock(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.block = nn.Sequential(_conv3x3(c, c * 2), nn.BatchNorm2d(c * 2), GLU(),
                                   _conv3x3(c, c), nn.BatchNorm2d(c))

    def forward(self, x):
        return self.block(x) + x


class CANet(nn.Module):
    """Conditioning Augmentation: sentence -> (mu, logvar) -> c = mu + exp(logvar/2) * eps."""

    def __init__(self, t_dim: int, c_dim: int):
        super().__init__()
        self.c_dim = c_dim
        self.fc = nn.Linear(t_dim, c_dim * 4)
        self.glu = GLU()

    def forward(self, sent_emb, eps):
        x = self.glu(self.fc(sent_emb))
        mu, logvar = x[:, :self.c_dim], x[:, self.c_dim:]
        return mu + torch.exp(0.5 * logvar) * eps, mu, logvar


class InitStage(nn.Module):
    """F0: Linear (no bias) + BN1d + GLU to ngf x 4 x 4, then four nearest-x2 up-blocks to 64 x 64."""

    def __init__(self, ngf: int, in_dim: int):
        super().__init__()
        self.gf_dim = ngf
        self.fc = nn.Sequential(nn.Linear(in_dim, ngf * 4 * 4 * 2, bias=False),
                                nn.BatchNorm1d(ngf * 4 * 4 * 2), GLU())
        self.upsample1 = _up_block(ngf, ngf // 2)
        self.upsample2 = _up_block(ngf // 2, ngf // 4)
        self.upsample3 = _up_block(ngf // 4, ngf // 8)
        self.upsample4 = _up_block(ngf // 8, ngf // 16)

    def forward(self, z_code, c_code):
        x = self.fc(torch.cat((c_code, z_code), 1)).view(-1, self.gf_dim, 4, 4)
        return self.upsample4(self.upsample3(self.upsample2(self.upsample1(x))))


class WordAttention(nn.Module):
    """Paper Eq. 2: project words to the image width (1x1 conv), dot-product with every pixel,
    softmax over words (padding = -inf), and return the word-context per pixel + the map."""

    def __init__(self, idf: int, cdf: int, faithful_mask: bool = True):
        super().__init__()
        self.conv_context = nn.Conv2d(cdf, idf, 1, 1, 0, bias=False)
        self.faithful_mask = faithful_mask

    def forward(self, h, words, mask: torch.Tensor | None):
        b, _, ih, iw = h.shape
        q, n_words = ih * iw, words.size(2)
        target = h.reshape(b, -1, q).transpose(1, 2)                     # B x q x idf
        source = self.conv_context(words.unsqueeze(3)).squeeze(3)         # B x idf x L
        logits = torch.bmm(target, source)                                # B x q x L
        if mask is not None:
            if self.faithful_mask:  # the authors' layout, see module docstring
                rows = mask.to(torch.bool).repeat(q, 1).reshape(b, q, n_words)
            else:
                rows = mask.to(torch.bool).unsqueeze(1)
            logits = logits.masked_fill(rows, float("-inf"))
        attn = torch.softmax(logits, dim=2).transpose(1, 2)               # B x L x q
        context = torch.bmm(source, attn).reshape(b, -1, ih, iw)
        return context, attn.reshape(b, n_words, ih, iw)


class NextStage(nn.Module):
    """F1/F2: word attention, concat [h, context], R_NUM residual blocks, nearest-x2 up-block."""

    def __init__(self, ngf: int, nef: int, r_num: int, faithful_mask: bool = True):
        super().__init__()
        self.att = WordAttention(ngf, nef, faithful_mask)
        self.residual = nn.Sequential(*[ResBlock(ngf * 2) for _ in range(r_num)])
        self.upsample = _up_block(ngf * 2, ngf)

    def forward(self, h, word_embs, mask):
        context, att = self.att(h, word_embs, mask)
        return self.upsample(self.residual(torch.cat((h, context), 1))), att


class ImageHead(nn.Module):
    def __init__(self, ngf: int):
        super().__init__()
        self.img = nn.Sequential(_conv3x3(ngf, 3), nn.Tanh())

    def forward(self, h):
        return self.img(h)


class GNet(nn.Module):
    """G_NET (or G_DCGAN with dcgan=True). Input dict: z_code (B x Z_DIM), sent_emb (B x EMBEDDING_DIM), word_embs
    (B x EMBEDDING_DIM x L), mask (B x L bool, True = padding; optional), eps (B x CONDITION_DIM;
    optional: drawn from `generator` when absent). Output dict: fake_imgs [64, 128, 256 px in
    [-1, 1]] (one per branch; G_DCGAN: only the last), att_maps [stage-2, stage-3 maps, B x L x h x w], mu, logvar."""

    def __init__(self, gf_dim=32, z_dim=100, condition_dim=100, r_num=2, embedding_dim=256,
                 branch_num=3, faithful_mask: bool = True, dcgan: bool = False):
        super().__init__()
        if not 1 <= branch_num <= 3:
            raise ValueError("branch_num must be 1, 2 or 3")
        self.z_dim, self.condition_dim, self.branch_num = z_dim, condition_dim, branch_num
        self.dcgan = dcgan
        self.ca_net = CANet(embedding_dim, condition_dim)
        self.h_net1 = InitStage(gf_dim * 16, z_dim + condition_dim)
        if not dcgan:
            self.img_net1 = ImageHead(gf_dim)
        if branch_num > 1:
            self.h_net2 = NextStage(gf_dim, embedding_dim, r_num, faithful_mask)
            if not dcgan:
                self.img_net2 = ImageHead(gf_dim)
        if branch_num > 2:
            self.h_net3 = NextStage(gf_dim, embedding_dim, r_num, faithful_mask)
            if not dcgan:
                self.img_net3 = ImageHead(gf_dim)
        if dcgan:  # G_DCGAN (AttnDCGAN): one image head after the last stage
            self.img_net = ImageHead(gf_dim)

    def forward(self, inputs: Mapping[str, torch.Tensor], generator: torch.Generator | None = None):
        sent = inputs["sent_emb"]
        words = inputs["word_embs"]
        eps = inputs.get("eps")
        if eps is None:
            dev = sent.device if generator is None else generator.device
            eps = torch.randn(sent.size(0), self.condition_dim, generator=generator, device=dev).to(sent)
        mask = inputs.get("mask")
        if mask is not None and mask.size(1) > words.size(2):
            mask = mask[:, :words.size(2)]  # as the authors' trainer does
        c_code, mu, logvar = self.ca_net(sent, eps)
        h = self.h_net1(inputs["z_code"], c_code)
        imgs, atts = [], []
        for i in range(1, self.branch_num + 1):
            if i > 1:
                h, att = getattr(self, f"h_net{i}")(h, words, mask)
                atts.append(att)
            if not self.dcgan:
                imgs.append(getattr(self, f"img_net{i}")(h))
        if self.dcgan:
            imgs.append(self.img_net(h))
        return {"fake_imgs": imgs, "att_maps": atts, "mu": mu, "logvar": logvar}


# ----------------------------------------------------------------------------------------------
# DAMSM text encoder (RNN_ENCODER)
# ----------------------------------------------------------------------------------------------


class TextEncoder(nn.Module):
    """RNN_ENCODER: Embedding -> Dropout -> packed (bi)LSTM/GRU, zero initial state.
    Input dict: captions (B x L int64, 0 = padding), cap_lens (B; optional: counted from non-zero
    ids; any order). Output: words_emb (B x nhidden x max(cap_lens)) with zeros past each length,
    sent_emb (B x nhidden) = final hidden state of the last layer, forward then backward."""

    def __init__(self, ntoken: int, ninput: int = 300, nhidden: int = 256, nlayers: int = 1,
                 bidirectional: bool = True, rnn_type: str = "LSTM", drop_prob: float = 0.5):
        super().__init__()
        self.ndir = 2 if bidirectional else 1
        self.nhidden, self.nlayers = nhidden, nlayers
        self.encoder = nn.Embedding(ntoken, ninput)
        self.drop = nn.Dropout(drop_prob)
        rnn = {"LSTM": nn.LSTM, "GRU": nn.GRU}[rnn_type]
        # the authors pass dropout=drop_prob, which only acts between layers (and warns for 1 layer)
        self.rnn = rnn(ninput, nhidden // self.ndir, nlayers, batch_first=True,
                       dropout=drop_prob if nlayers > 1 else 0.0, bidirectional=bidirectional)

    def forward(self, inputs: Mapping[str, torch.Tensor]):
        captions = inputs["captions"]
        lens = inputs.get("cap_lens")
        if lens is None:
            lens = (captions != 0).sum(1)
        emb = self.drop(self.encoder(captions))
        packed = pack_padded_sequence(emb, lens.to("cpu", torch.int64), batch_first=True,
                                      enforce_sorted=False)
        out, hidden = self.rnn(packed)
        out = pad_packed_sequence(out, batch_first=True)[0]
        h_n = hidden[0] if isinstance(hidden, tuple) else hidden         # (layers*dirs) x B x h
        # the authors' view(-1, nhidden) only works for one layer; take the last layer's states
        sent = h_n[-self.ndir:].transpose(0, 1).reshape(captions.size(0), self.nhidden)
        return {"words_emb": out.transpose(1, 2), "sent_emb": sent}


# ----------------------------------------------------------------------------------------------
# DAMSM image encoder (CNN_ENCODER): Inception-v3 trunk with torchvision's module names
# ----------------------------------------------------------------------------------------------


class BasicConv2d(nn.Module):
    def __init__(self, cin, cout, **kw):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, bias=False, **kw)
        self.bn = nn.BatchNorm2d(cout, eps=0.001)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)))


class _Mixed(nn.Module):
    """An Inception module: named branches (each a chain of BasicConv2d), concatenated."""

    def __init__(self, convs: dict, paths: Sequence):
        super().__init__()
        for name, args in convs.items():
            self.add_module(name, BasicConv2d(*args[:2], **args[2]))
        self.paths = paths

    def forward(self, x):
        outs = []
        for path in self.paths:
            if path == "pool_max":
                outs.append(F.max_pool2d(x, 3, 2))
                continue
            y = x
            if path[0] == "avg":
                y = F.avg_pool2d(y, 3, 1, 1)
                path = path[1:]
            for step in path:
                if isinstance(step, tuple):  # split into parallel 1x3 / 3x1 and concat
                    y = torch.cat([getattr(self, s)(y) for s in step], 1)
                else:
                    y = getattr(self, step)(y)
            outs.append(y)
        return torch.cat(outs, 1)


def _k(k, s=1, p=0):
    return {"kernel_size": k, "stride": s, "padding": p}


def _inception_a(cin, pool):
    return _Mixed({"branch1x1": (cin, 64, _k(1)), "branch5x5_1": (cin, 48, _k(1)),
                   "branch5x5_2": (48, 64, _k(5, 1, 2)), "branch3x3dbl_1": (cin, 64, _k(1)),
                   "branch3x3dbl_2": (64, 96, _k(3, 1, 1)), "branch3x3dbl_3": (96, 96, _k(3, 1, 1)),
                   "branch_pool": (cin, pool, _k(1))},
                  [["branch1x1"], ["branch5x5_1", "branch5x5_2"],
                   ["branch3x3dbl_1", "branch3x3dbl_2", "branch3x3dbl_3"], ["avg", "branch_pool"]])


def _inception_b(cin):
    return _Mixed({"branch3x3": (cin, 384, _k(3, 2)), "branch3x3dbl_1": (cin, 64, _k(1)),
                   "branch3x3dbl_2": (64, 96, _k(3, 1, 1)), "branch3x3dbl_3": (96, 96, _k(3, 2))},
                  [["branch3x3"], ["branch3x3dbl_1", "branch3x3dbl_2", "branch3x3dbl_3"], "pool_max"])


def _inception_c(cin, c7):
    h, v = _k((1, 7), 1, (0, 3)), _k((7, 1), 1, (3, 0))
    return _Mixed({"branch1x1": (cin, 192, _k(1)), "branch7x7_1": (cin, c7, _k(1)),
                   "branch7x7_2": (c7, c7, h), "branch7x7_3": (c7, 192, v),
                   "branch7x7dbl_1": (cin, c7, _k(1)), "branch7x7dbl_2": (c7, c7, v),
                   "branch7x7dbl_3": (c7, c7, h), "branch7x7dbl_4": (c7, c7, v),
                   "branch7x7dbl_5": (c7, 192, h), "branch_pool": (cin, 192, _k(1))},
                  [["branch1x1"], ["branch7x7_1", "branch7x7_2", "branch7x7_3"],
                   ["branch7x7dbl_%d" % i for i in range(1, 6)], ["avg", "branch_pool"]])


def _inception_d(cin):
    return _Mixed({"branch3x3_1": (cin, 192, _k(1)), "branch3x3_2": (192, 320, _k(3, 2)),
                   "branch7x7x3_1": (cin, 192, _k(1)), "branch7x7x3_2": (192, 192, _k((1, 7), 1, (0, 3))),
                   "branch7x7x3_3": (192, 192, _k((7, 1), 1, (3, 0))), "branch7x7x3_4": (192, 192, _k(3, 2))},
                  [["branch3x3_1", "branch3x3_2"], ["branch7x7x3_%d" % i for i in range(1, 5)], "pool_max"])


def _inception_e(cin):
    h, v = _k((1, 3), 1, (0, 1)), _k((3, 1), 1, (1, 0))
    return _Mixed({"branch1x1": (cin, 320, _k(1)), "branch3x3_1": (cin, 384, _k(1)),
                   "branch3x3_2a": (384, 384, h), "branch3x3_2b": (384, 384, v),
                   "branch3x3dbl_1": (cin, 448, _k(1)), "branch3x3dbl_2": (448, 384, _k(3, 1, 1)),
                   "branch3x3dbl_3a": (384, 384, h), "branch3x3dbl_3b": (384, 384, v),
                   "branch_pool": (cin, 192, _k(1))},
                  [["branch1x1"], ["branch3x3_1", ("branch3x3_2a", "branch3x3_2b")],
                   ["branch3x3dbl_1", "branch3x3dbl_2", ("branch3x3dbl_3a", "branch3x3dbl_3b")],
                   ["avg", "branch_pool"]])


class ImageEncoder(nn.Module):
    """CNN_ENCODER: resize to 299x299 (bilinear), Inception-v3 up to Mixed_7c; `features` = 1x1 conv
    of the Mixed_6e map (B x nef x 17 x 17), `cnn_code` = Linear of the 8x8-average-pooled Mixed_7c
    (B x nef). Input RGB in [-1, 1] (the DAMSM loader normalises with mean 0.5, std 0.5).

    `align_corners`: the authors' nn.Upsample(mode='bilinear') meant align_corners=True on the PyTorch
    0.3 they trained with and align_corners=False on PyTorch >= 0.4 (what running their code today
    gives); default False, i.e. today's behaviour."""

    def __init__(self, nef: int = 256, align_corners: bool = False):
        super().__init__()
        self.align_corners = align_corners
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, kernel_size=3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, kernel_size=3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, kernel_size=3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, kernel_size=1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, kernel_size=3)
        self.Mixed_5b = _inception_a(192, 32)
        self.Mixed_5c = _inception_a(256, 64)
        self.Mixed_5d = _inception_a(288, 64)
        self.Mixed_6a = _inception_b(288)
        self.Mixed_6b = _inception_c(768, 128)
        self.Mixed_6c = _inception_c(768, 160)
        self.Mixed_6d = _inception_c(768, 160)
        self.Mixed_6e = _inception_c(768, 192)
        self.Mixed_7a = _inception_d(768)
        self.Mixed_7b = _inception_e(1280)
        self.Mixed_7c = _inception_e(2048)
        self.emb_features = nn.Conv2d(768, nef, 1, 1, 0, bias=False)
        self.emb_cnn_code = nn.Linear(2048, nef)

    def forward(self, x):
        x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=self.align_corners)
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(F.max_pool2d(x, 3, 2)))
        x = F.max_pool2d(x, 3, 2)
        for name in ("5b", "5c", "5d", "6a", "6b", "6c", "6d", "6e"):
            x = getattr(self, "Mixed_" + name)(x)
        features = x
        for name in ("7a", "7b", "7c"):
            x = getattr(self, "Mixed_" + name)(x)
        x = F.avg_pool2d(x, kernel_size=8).flatten(1)
        return {"features": self.emb_features(features), "cnn_code": self.emb_cnn_code(x)}


# ----------------------------------------------------------------------------------------------
# Text helpers: tokenizer, vocabulary, id tensors
# ----------------------------------------------------------------------------------------------

_WORD = re.compile(r"\w+")


def tokenize(sentence: str) -> list[str]:
    """The dataset's tokenisation: drop the U+FFFD pairs, lower-case, \\w+ runs, keep ASCII only."""
    words = _WORD.findall(sentence.replace("\ufffd\ufffd", " ").lower())
    words = (w.encode("ascii", "ignore").decode("ascii") for w in words)
    return [w for w in words if w]


def load_vocab(path: str | Path) -> dict[str, int]:
    """Read `wordtoix` from JSON ({word: index}, or a list where position = index) or from text
    (one word per line, line number from 0 = index). Index 0 is '<end>' (padding) and no real
    word may use it. Raises ValueError with the reason."""
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() == ".json":
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"not valid JSON ({e.msg}, line {e.lineno})") from None
        if isinstance(obj, list):
            obj = {w: i for i, w in enumerate(obj)}
        if not isinstance(obj, dict):
            raise ValueError("JSON vocabulary must be an object {word: index} or a list of words")
    else:
        words = [w.strip() for w in text.splitlines()]
        obj = {w: i for i, w in enumerate(words) if w}
    vocab: dict[str, int] = {}
    for w, i in obj.items():
        if not isinstance(w, str) or isinstance(i, bool) or not isinstance(i, int) or i < 0:
            raise ValueError(f"entry {w!r}: {i!r} is not a word -> non-negative integer index")
        vocab[w] = i
    real = {w: i for w, i in vocab.items() if w != "<end>"}
    if not real:
        raise ValueError("no words")
    if 0 in real.values():
        raise ValueError("index 0 is the padding '<end>' token; a word uses it")
    if len(set(real.values())) != len(real):
        raise ValueError("two words share an index")
    return vocab


def encode_captions(token_lists: Sequence[Sequence[str]], vocab: Mapping[str, int]):
    """Map tokens to ids (unknown words must already be removed) and pad with 0.
    Returns (captions B x max_len int64, cap_lens B int64) in the given order."""
    lens = [len(t) for t in token_lists]
    if not lens or min(lens) == 0:
        raise ValueError("every caption needs at least one known word")
    ids = np.zeros((len(lens), max(lens)), dtype=np.int64)
    for r, toks in enumerate(token_lists):
        ids[r, :len(toks)] = [vocab[t] for t in toks]
    return torch.from_numpy(ids), torch.tensor(lens, dtype=torch.int64)


@torch.no_grad()
def generate(gnet: GNet, text_encoder: TextEncoder, captions: torch.Tensor, cap_lens: torch.Tensor,
             generator: torch.Generator, device: str | torch.device = "cpu") -> np.ndarray:
    """Images for id-encoded captions, one caption per forward so that the mask quirk never mixes
    captions and each image depends only on its caption and the generator state. z and eps are drawn
    on the CPU generator in caption order (z first). Returns uint8 N x H x W x 3 RGB: [-1, 1] -> [0, 255]."""
    out = []
    for cap, n in zip(captions, cap_lens.tolist()):
        cap = cap[:n].unsqueeze(0)
        z = torch.randn(1, gnet.z_dim, generator=generator)
        eps = torch.randn(1, gnet.condition_dim, generator=generator)
        txt = text_encoder({"captions": cap.to(device), "cap_lens": torch.tensor([n])})
        res = gnet({"z_code": z.to(device), "sent_emb": txt["sent_emb"], "word_embs": txt["words_emb"],
                    "mask": (cap == 0).to(device), "eps": eps.to(device)})
        img = res["fake_imgs"][-1][0].float().cpu()
        out.append(((img + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy())
    return np.stack(out)


# ----------------------------------------------------------------------------------------------
# Registry entries
# ----------------------------------------------------------------------------------------------

_G_REQUIRED = ("ca_net.fc.weight", "ca_net.fc.bias", "h_net1.fc.0.weight", "h_net1.fc.1.running_var",
               "h_net1.upsample4.1.weight")


def _shape(sd: StateDict, key: str, ndim: int) -> tuple[int, ...]:
    t = sd.get(key)
    if t is None or t.dim() != ndim:
        raise UnknownCheckpoint(f"attngan: {key} missing or not {ndim}-D")
    return tuple(t.shape)


def _detect_g(sd: StateDict) -> bool:
    return all(k in sd for k in _G_REQUIRED) and ("img_net1.img.0.weight" in sd or "img_net.img.0.weight" in sd)


def _from_sd_g(sd: StateDict):
    dcgan = "img_net1.img.0.weight" not in sd
    fc_out, emb = _shape(sd, "ca_net.fc.weight", 2)
    fc0_out, in_dim = _shape(sd, "h_net1.fc.0.weight", 2)
    gf = _shape(sd, "img_net.img.0.weight" if dcgan else "img_net1.img.0.weight", 4)[1]
    if fc_out % 4 or fc0_out != gf * 16 * 32:
        raise UnknownCheckpoint("attngan: ca_net.fc / h_net1.fc.0 widths do not fit GF_DIM "
                                f"{gf} (got {fc_out}, {fc0_out})")
    cond = fc_out // 4
    z = in_dim - cond
    branch = 1 + sum(f"h_net{i}.att.conv_context.weight" in sd for i in (2, 3))
    r_num = len({k.split(".")[2] for k in sd if k.startswith("h_net2.residual.")}) if branch > 1 else 0
    if z <= 0 or (branch > 1 and r_num == 0):
        raise UnknownCheckpoint("attngan: inconsistent generator layout")
    hp = {"GF_DIM": gf, "Z_DIM": z, "CONDITION_DIM": cond, "R_NUM": r_num, "EMBEDDING_DIM": emb,
          "BRANCH_NUM": branch, "B_DCGAN": dcgan, "image_size": 64 * 2 ** (branch - 1),
          "value_range": (-1.0, 1.0),
          "note": "not an image-to-image net: inputs are noise and DAMSM text features (attngan-text); "
                  "fake_imgs come out in [-1, 1] (tanh): map x -> (x + 1) / 2 for [0, 1]"}
    net = GNet(gf, z, cond, max(r_num, 1), emb, branch, dcgan=dcgan)
    if dcgan:
        variant = "attndcgan"
    else:
        published = {(32, 100, 100, 2, 256, 3): "attngan-birds", (48, 100, 100, 3, 256, 3): "attngan-coco"}
        variant = published.get((gf, z, cond, r_num, emb, branch), "attngan")
    spec = ModelSpec(arch="attngan", variant=variant, scale=0, input_range=1.0, channel_order="RGB",
                     extra_inputs=("z_code", "sent_emb", "word_embs", "mask", "eps"), output="dict",
                     hyperparams=hp)
    return net, spec


def _rnn_layout(sd: StateDict):
    """(ntoken, ninput, hidden per direction, nlayers, bidirectional, rnn type) or None."""
    if "encoder.weight" not in sd or "rnn.weight_ih_l0" not in sd or "rnn.weight_hh_l0" not in sd:
        return None
    if any(not (k == "encoder.weight" or k.startswith("rnn.")) for k in sd):
        return None
    ntoken, ninput = sd["encoder.weight"].shape
    gates_h, h = sd["rnn.weight_hh_l0"].shape
    if h == 0 or gates_h % h or gates_h // h not in (3, 4):
        return None
    nlayers = sum(f"rnn.weight_ih_l{i}" in sd for i in range(64))
    bidir = "rnn.weight_ih_l0_reverse" in sd
    return ntoken, ninput, h, nlayers, bidir, "LSTM" if gates_h // h == 4 else "GRU"


def _detect_text(sd: StateDict) -> bool:
    return _rnn_layout(sd) is not None


def _from_sd_text(sd: StateDict):
    lay = _rnn_layout(sd)
    if lay is None:
        raise UnknownCheckpoint("attngan-text: not an RNN_ENCODER state dict")
    ntoken, ninput, h, nlayers, bidir, kind = lay
    nhidden = h * (2 if bidir else 1)
    net = TextEncoder(ntoken, ninput, nhidden, nlayers, bidir, kind)
    spec = ModelSpec(arch="attngan-text", variant=f"rnn-encoder-{kind.lower()}", scale=0, input_range=1.0,
                     extra_inputs=("captions", "cap_lens"), output="dict",
                     hyperparams={"ntoken": ntoken, "ninput": ninput, "nhidden": nhidden, "nlayers": nlayers,
                                  "bidirectional": bidir, "rnn_type": kind,
                                  "note": "input is word ids (0 = padding) from the dataset's wordtoix, "
                                          "not an image; output feeds the attngan generator"})
    return net, spec


def _detect_image(sd: StateDict) -> bool:
    return all(k in sd for k in ("emb_features.weight", "emb_cnn_code.weight", "emb_cnn_code.bias",
                                 "Conv2d_1a_3x3.conv.weight", "Mixed_7c.branch_pool.conv.weight"))


def _from_sd_image(sd: StateDict):
    nef = _shape(sd, "emb_cnn_code.weight", 2)[0]
    spec = ModelSpec(arch="attngan-image", variant="cnn-encoder", scale=0, input_range=1.0,
                     channel_order="RGB", output="dict",
                     hyperparams={"nef": nef, "input_size": 299, "value_range": (-1.0, 1.0),
                                  "note": "images enter in [-1, 1]: map x in [0, 1] -> 2x - 1; any size, "
                                          "resized to 299x299 inside; outputs features (nef x 17 x 17) "
                                          "and cnn_code (nef)"})
    return ImageEncoder(nef), spec


ARCHITECTURES = (
    Architecture(name="attngan", detect=_detect_g, from_state_dict=_from_sd_g),
    Architecture(name="attngan-text", detect=_detect_text, from_state_dict=_from_sd_text),
    Architecture(name="attngan-image", detect=_detect_image, from_state_dict=_from_sd_image),
)
