"""MixVLP: the assembled model of Fig. 2(c) (and, by config, the AIAYN baselines of Fig. 2(a, b)).

    batch --(embed, eqs. 1-2)--> X_hat --(shared encoder, eq. 10)--> E_txt, E_img^{down,mid,up}
          --(fusion: UNIT eqs. 3-4 | UWOX + pair matching eqs. 5-9 | none)--> F_txt, F_img
          --> word head (L_txt)  and  multi-scale decoder eqs. 11-13 + pixel MLP (L_img)

    out = model(batch)              # dict: loss, L_txt, L_img, L_co, n_txt, n_img, n_co (tensors)
    f_img = model.encode_image(pyramid)           # (B, N, C) F_img tokens, levels finest first
    f_txt = model.encode_text(input_ids, mask)    # (B, L, C) F_txt tokens

The pre-training pass has static shapes, so it compiles to one graph and never waits on the
device: every row of the batch is encoded on both sides, and rows that lack the image or the
text (`has_image` / `has_text`) simply carry no weight in that side's loss (masked means), nor in
L_co. The masks themselves (words and patches) come with the batch from the data pipeline.
Floating-point inputs follow the weights' dtype (bf16 under DeepSpeed); losses are fp32.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from mixvlp_ds.config import from_dict, to_dict
from mixvlp_ds.model.config import ModelConfig
from mixvlp_ds.model.decoder import MultiScaleDecoder, SingleScaleDecoder
from mixvlp_ds.model.embeddings import PatchEmbedding, TextEmbedding
from mixvlp_ds.model.encoder import Encoder
from mixvlp_ds.model.fusion import PairMatchingHead, UnitFusion, UwoxFusion
from mixvlp_ds.model.heads import WordHead
from mixvlp_ds.model.losses import batch_pair_loss, image_loss, pair_loss, text_loss
from mixvlp_ds.model.masking import (
    IGNORE_INDEX,
    masked_word_positions,
    random_patch_masking,
    replace_patches,
    same_report,
)
from mixvlp_ds.model.patches import patchify, pyramid_positions, unpatchify

# a saved model directory (save_pretrained / from_pretrained)
WEIGHTS, CONFIG, TOKENIZER = "model.safetensors", "config.json", "tokenizer"
PRETRAINING = "pretraining.json"   # the pre-training run's facts fine-tuning reads (export.py)


class MixVLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        self.encoder = Encoder(cfg)        # ONE set of weights for words and patches
        if cfg.use_text:
            self.text_embed = TextEmbedding(cfg)
            self.word_head = WordHead(cfg)
        if cfg.use_image:
            self.patch_embed = PatchEmbedding(cfg)
            self.decoder = MultiScaleDecoder(cfg) if cfg.multiscale else SingleScaleDecoder(cfg)
            for i, pos in enumerate(pyramid_positions(cfg.level_sizes(), cfg.block_size)):
                self.register_buffer(f"positions_{i}", pos, persistent=False)
        if cfg.fusion == "unit":
            self.unit = UnitFusion(cfg)
        elif cfg.fusion == "uwox":
            self.uwox = UwoxFusion(cfg)
            self.pair_head = PairMatchingHead(cfg)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        """BERT's initialisation: N(0, 0.02) weights, zero biases, unit LayerNorms."""
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)
            if getattr(m, "bias", None) is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        """The weights' floating-point dtype (bf16 once DeepSpeed has cast the module)."""
        return next(p.dtype for p in self.parameters() if p.is_floating_point())

    # ------------------------------------------------------------------ inputs and embeddings
    def image_levels(self, pyramid: list[torch.Tensor]) -> list[torch.Tensor]:
        """uint8 pyramid [(B, S, S), (B, S/2, S/2), (B, S/4, S/4)] -> patches per encoded level,
        finest first: [(B, N_l, B*B)] in [0, 1], on the model's device in its dtype (only level 0
        if single scale)."""
        sizes = self.cfg.level_sizes()
        out = []
        for level, size in zip(pyramid, sizes, strict=False):
            if tuple(level.shape[1:]) != (size, size):
                raise ValueError(f"image level of shape {tuple(level.shape[1:])} does not match the model "
                                 f"(image_size={self.cfg.image_size}, expected {size}x{size})")
            x = level.to(self.device, non_blocking=True)
            x = x.to(self.dtype).div_(255.0) if x.dtype == torch.uint8 else x.to(self.dtype)
            out.append(patchify(x, self.cfg.block_size))
        if len(out) != len(sizes):
            raise ValueError(f"pyramid has {len(pyramid)} levels, the model needs {len(sizes)}")
        return out

    def encode_levels(self, levels: list[torch.Tensor]) -> list[torch.Tensor]:
        """Eq. 10: each level embedded (eq. 2) and encoded as its own sequence, without an
        attention mask (no padding), so SDPA may take its flash kernel.
        [(B, N_l, B*B)] -> [E_l (B, N_l, C)]."""
        return [self.encoder(self.patch_embed(x, getattr(self, f"positions_{i}").to(x.dtype)))
                for i, x in enumerate(levels)]

    def encode_words(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Eq. 1 + the shared encoder: (B, L) ids, (B, L) mask -> E_txt (B, L, C)."""
        mask = attention_mask.to(self.device).bool()
        return self.encoder(self.text_embed(input_ids.to(self.device)), mask)

    # ------------------------------------------------------------------ fusion helpers
    def _split(self, x: torch.Tensor) -> list[torch.Tensor]:
        """(B, N, C) -> per-level [(B, N_l, C)], finest first."""
        return list(x.split(self.cfg.patches_per_level(), dim=1))

    def fuse(self, e_txt: torch.Tensor | None, txt_mask: torch.Tensor | None,
             e_img: list[torch.Tensor] | None) -> tuple[torch.Tensor | None, list[torch.Tensor] | None]:
        """Fusion of whichever sides are present: E_txt (B, L, C) and E_img [(B, N_l, C)] ->
        (F_txt (B, L, C) or None, F_img [(B, N_l, C)] or None). UNIT needs both (same rows)."""
        fusion = self.cfg.fusion
        if fusion == "none":
            return e_txt, e_img
        if fusion == "uwox":
            f_txt = None if e_txt is None else self.uwox(e_txt, txt_mask)
            f_img = None if e_img is None else self._split(self.uwox(torch.cat(e_img, dim=1)))
            return f_txt, f_img
        if e_txt is None or e_img is None:
            raise ValueError("UNIT fuses image and text: it needs both the image and the report "
                             "(use encode_pair, or fusion='uwox' for one modality)")
        f_txt, f_img = self.unit(e_txt, txt_mask, torch.cat(e_img, dim=1))
        return f_txt, self._split(f_img)

    # ------------------------------------------------------------------ pre-training pass
    def forward_encoder(self, batch: dict) -> dict:
        """Apply the batch's masks and encode both sides of every row. Returns a state dict:
        has_text (B,), txt_mask (B, L), mlm_labels (B, L), e_txt (B, L, C); has_image (B,),
        e_img [(B, N_l, C)], target (B, N_down, B*B), img_mask (B, N_down) (False in rows
        without an image); pair (B,). A batch that carries one modality only (no "pyramid", or
        no "input_ids": a structural choice, not a per-row one) is encoded on that side alone."""
        dev = self.device
        state: dict = {"pair": batch["pair"].to(dev)}
        if self.cfg.use_text and "input_ids" in batch:
            mask = batch["attention_mask"].to(dev).bool()
            has_text = batch["has_text"].to(dev).bool()
            labels = torch.where(has_text[:, None], batch["mlm_labels"].to(dev), IGNORE_INDEX)
            ids = batch["input_ids"].to(dev)
            state.update(has_text=has_text, txt_mask=mask, mlm_labels=labels, input_ids=ids,
                         e_txt=self.encode_words(ids, mask))
        if self.cfg.use_image and "pyramid" in batch:
            has_image = batch["has_image"].to(dev).bool()
            levels = self.image_levels(batch["pyramid"])
            masked = [replace_patches(x, m.to(dev), s.to(dev))
                      for x, m, s in zip(levels, batch["patch_mask"], batch["patch_source"], strict=False)]
            state.update(has_image=has_image, target=levels[0],
                         img_mask=batch["patch_mask"][0].to(dev) & has_image[:, None],
                         e_img=self.encode_levels(masked), seen=masked)
        return state

    def forward_fusion(self, state: dict) -> dict:
        """Adds f_txt (B, L, C), f_img [(B, N_l, C)] and, for UWOX, pair_logits (B,) with
        pair_weight (B,): 1 where the row has both an image and a report."""
        e_txt, e_img, mask = state.get("e_txt"), state.get("e_img"), state.get("txt_mask")
        f_txt, f_img = self.fuse(e_txt, mask, e_img)
        if f_txt is not None:
            state["f_txt"] = f_txt
        if f_img is not None:
            state["f_img"] = f_img
        if self.cfg.fusion == "uwox" and e_txt is not None and e_img is not None:
            e_all = torch.cat(e_img, 1)
            head = self.pair_head.all_pairs if self.cfg.pair_loss == "batch" else self.pair_head
            state["pair_logits"] = head(e_txt, mask, e_all)     # (B,) or, for "batch", (B, B)
            state["pair_weight"] = state["has_image"] & state["has_text"]
        return state

    def forward_decoder(self, f_img: list[torch.Tensor], seen: list[torch.Tensor]) -> torch.Tensor:
        """Eqs. 11-13 + MLP: [F_l (B, N_l, C)] -> predicted finest patches (B, N_down, B*B). `seen`:
        the levels' patches as the encoder saw them (masked ones replaced); with
        cfg.decoder_pixel_skip the MLP predicts the correction to the mid level, upsampled."""
        pred = self.decoder(f_img)
        if self.cfg.decoder_pixel_skip:
            pred = pred + self.upsampled_mid(seen[1])
        return pred

    def upsampled_mid(self, mid: torch.Tensor) -> torch.Tensor:
        """(B, N_mid, B*B) mid-level patches -> the level bilinearly upsampled to the finest grid, as
        finest-level patches (B, N_down, B*B)."""
        b = self.cfg.block_size
        image = unpatchify(mid, b)[:, None]                                  # (B, 1, S/2, S/2)
        up = nn.functional.interpolate(image, scale_factor=2, mode="bilinear", align_corners=False)
        return patchify(up[:, 0], b)

    def forward_loss(self, state: dict) -> dict:
        """L = w_txt L_txt + w_img L_img + w_co L_co, each a masked mean in fp32, with its count
        (a 0-d tensor: how many words, patches, pairs it averages)."""
        zero = torch.zeros((), dtype=torch.float32, device=self.device)
        out = {"L_txt": zero, "L_img": zero, "L_co": zero, "n_txt": zero, "n_img": zero, "n_co": zero}
        if "f_txt" in state:
            f_txt = state["f_txt"]
            positions, targets = masked_word_positions(state["mlm_labels"], self.cfg.max_masked_words)
            words = f_txt.gather(1, positions[:, :, None].expand(-1, -1, f_txt.shape[-1]))   # (B, K, C)
            out["L_txt"], out["n_txt"] = text_loss(self.word_head(words), targets)
        if "f_img" in state:
            pred = self.forward_decoder(state["f_img"], state["seen"])
            out["L_img"], out["n_img"] = image_loss(pred, state["target"], state["img_mask"])
        if "pair_logits" in state:
            logits, pair, weight = state["pair_logits"], state["pair"], state["pair_weight"]
            if self.cfg.pair_loss == "batch":
                same = same_report(state["input_ids"], state["mlm_labels"])
                out["L_co"], out["n_co"] = batch_pair_loss(logits, pair, weight, same)
            else:
                out["L_co"], out["n_co"] = pair_loss(logits, pair, weight)
        c = self.cfg
        out["loss"] = c.weight_txt * out["L_txt"] + c.weight_img * out["L_img"] + c.weight_co * out["L_co"]
        return out

    def forward(self, batch: dict) -> dict:
        """One pre-training step's forward on a batch dict (mixvlp_ds/data/batch.py), which
        carries the word masks (mlm_labels) and the patch masks (patch_mask, patch_source)."""
        return self.forward_loss(self.forward_fusion(self.forward_encoder(batch)))

    # ------------------------------------------------------------------ feature API
    def encode_image(self, pyramid: list[torch.Tensor]) -> torch.Tensor:
        """F_img tokens of unmasked images: uint8 pyramid -> (B, N, C), levels finest first."""
        return torch.cat(self.fuse(None, None, self.encode_levels(self.image_levels(pyramid)))[1], dim=1)

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """F_txt tokens: (B, L) ids, (B, L) mask -> (B, L, C)."""
        mask = attention_mask.to(self.device).bool()
        return self.fuse(self.encode_words(input_ids, mask), mask, None)[0]

    def encode_pair(self, pyramid: list[torch.Tensor], input_ids: torch.Tensor,
                    attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(F_img (B, N, C), F_txt (B, L, C)) of image-report tuples; the only way for UNIT."""
        mask = attention_mask.to(self.device).bool()
        e_img = self.encode_levels(self.image_levels(pyramid))
        e_txt = self.encode_words(input_ids, mask)
        f_txt, f_img = self.fuse(e_txt, mask, e_img)
        return torch.cat(f_img, dim=1), f_txt

    @staticmethod
    def pool(tokens: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Global average pooling over real tokens: (B, N, C), (B, N) -> (B, C)."""
        if mask is None:
            return tokens.mean(dim=1)
        m = mask.to(tokens.dtype)[:, :, None]
        return (tokens * m).sum(1) / m.sum(1).clamp_min(1.0)

    def pooled_image(self, pyramid: list[torch.Tensor]) -> torch.Tensor:
        """(B, C) pooled F_img."""
        return self.pool(self.encode_image(pyramid))

    def pooled_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(B, C) pooled F_txt over real tokens."""
        return self.pool(self.encode_text(input_ids, attention_mask), attention_mask.to(self.device))

    @torch.no_grad()
    def regenerate(self, pyramid: list[torch.Tensor], mask: torch.Tensor | list[torch.Tensor],
                   generator: torch.Generator | None = None, input_ids: torch.Tensor | None = None,
                   attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Predict masked finest-level patches of images.

        mask: (B, N_down) bool (finest level masked, coarser levels intact) or one mask per level.
        Masked patches are replaced by random patches of the batch, as in pre-training. UNIT also
        needs the report (input_ids, attention_mask). Returns (B, S, S) in [0, 1]: predictions at
        masked patches, original pixels elsewhere."""
        levels = self.image_levels(pyramid)
        if isinstance(mask, torch.Tensor):
            intact = [torch.zeros(x.shape[:2], dtype=torch.bool, device=self.device) for x in levels[1:]]
            mask = [mask.to(self.device).bool()] + intact
        masked, masks = random_patch_masking(levels, self.cfg.image_mask_ratio, generator, mask)
        e_img = self.encode_levels(masked)
        e_txt = txt_mask = None
        if input_ids is not None:
            txt_mask = attention_mask.to(self.device).bool()
            e_txt = self.encode_words(input_ids, txt_mask)
        pred = self.forward_decoder(self.fuse(e_txt, txt_mask, e_img)[1], masked).float()
        out = torch.where(masks[0][:, :, None], pred.clamp(0, 1), levels[0].float())
        return unpatchify(out, self.cfg.block_size)

    # ------------------------------------------------------------------ persistence
    def save_pretrained(self, directory: str | Path, tokenizer=None,
                        state: dict[str, torch.Tensor] | None = None,
                        pretraining: dict | None = None) -> Path:
        """DIR/model.safetensors + DIR/config.json (+ DIR/tokenizer/ when given). `state`: other
        weights than the module's own, e.g. the fp32 master weights of a bf16 run gathered from
        the ZeRO partitions. `pretraining`: facts of the pre-training run, DIR/pretraining.json."""
        from safetensors.torch import save_file

        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        state = self.state_dict() if state is None else state
        state = {k: v.detach().cpu().contiguous() for k, v in state.items()}
        save_file(state, str(d / WEIGHTS), metadata={"format": "pt", "model": "MixVLP"})
        (d / CONFIG).write_text(json.dumps({"model": "MixVLP", "config": to_dict(self.cfg)}, indent=2))
        if tokenizer is not None:
            tokenizer.save_pretrained(str(d / TOKENIZER))
        if pretraining is not None:
            (d / PRETRAINING).write_text(json.dumps(pretraining, indent=2))
        return d

    @classmethod
    def from_pretrained(cls, directory: str | Path, map_location: str | torch.device = "cpu") -> MixVLP:
        """A model saved by save_pretrained; errors name the file and what does not fit."""
        from safetensors.torch import load_file

        d = Path(directory)
        for name in (CONFIG, WEIGHTS):
            if not (d / name).is_file():
                raise FileNotFoundError(f"{d / name} does not exist: not a MixVLP directory "
                                        f"(save_pretrained)")
        meta = json.loads((d / CONFIG).read_text())
        if meta.get("model") != "MixVLP":
            raise ValueError(f"{d / CONFIG} is not a MixVLP config (model={meta.get('model')!r})")
        model = cls(from_dict(ModelConfig, meta["config"], where=str(d / CONFIG)))
        state = load_file(str(d / WEIGHTS), device=str(map_location))
        missing, unexpected = model.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ValueError(f"{d / WEIGHTS} does not fit its config: missing {missing}, "
                             f"unexpected {unexpected}")
        return model.to(map_location)
