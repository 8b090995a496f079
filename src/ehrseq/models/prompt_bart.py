"""PromptBART: a BART encoder-decoder over visit sequences, conditioned on demographic prompts.

`transformers.BartForConditionalGeneration` is built from a `BartConfig` (random weights,
nothing downloaded). Demographics enter as learned prompt vectors (PromptEHR's
conditional prompts): each numeric feature x becomes x * w_f + b_f, each categorical one
an embedding row; the feature vectors, flattened, are projected to `prompt_length`
vectors of size d_model. The encoder and the decoder each have their own prompt module;
the prompts are prepended to the token embeddings (BART then adds positions), and their
output positions are dropped before the vocabulary projection.

The model knows no corruption and no loop: `forward` maps (encoder ids, decoder ids,
demographics) to logits; `tasks.PromptBartTask` is what the training loop calls.
`attention_dropout` is apart from `dropout` for its CPU cost (see `models/transformer.py`).
Special token ids are constructor arguments, and `eos_token_id` must be the END token
of the sequences, so that a sampler stops on it.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn
from transformers import BartConfig, BartForConditionalGeneration


class DemographicPrompt(nn.Module):
    """Numeric [B, N] and categorical [B, C] features -> prompt vectors [B, P, D]."""

    def __init__(self, n_numeric: int, cat_cardinalities: list[int], prompt_length: int, d_model: int):
        super().__init__()
        self.num_weight = nn.Parameter(torch.randn(n_numeric, d_model) * 0.02)
        self.num_bias = nn.Parameter(torch.zeros(n_numeric, d_model))
        self.cat_embed = nn.Embedding(sum(cat_cardinalities), d_model)
        nn.init.normal_(self.cat_embed.weight, std=0.02)
        # first row of each categorical feature in the shared table
        self.register_buffer("cat_offsets", torch.tensor(np.cumsum([0, *cat_cardinalities[:-1]]), dtype=torch.long))
        n_features = n_numeric + len(cat_cardinalities)
        self.project = nn.Sequential(nn.Linear(n_features * d_model, d_model), nn.GELU(),
                                     nn.Linear(d_model, prompt_length * d_model))
        self.prompt_length, self.d_model = prompt_length, d_model

    def forward(self, x_num: torch.Tensor, x_cat: torch.Tensor) -> torch.Tensor:
        numeric = x_num[..., None] * self.num_weight + self.num_bias  # [B, N, D]
        categorical = self.cat_embed(x_cat + self.cat_offsets)  # [B, C, D]
        features = torch.cat([numeric, categorical], dim=1).flatten(1)  # [B, (N + C) D]
        return self.project(features).view(-1, self.prompt_length, self.d_model)  # [B, P, D]


class PromptBart(nn.Module):
    def __init__(self, vocab_size: int, n_numeric: int, cat_cardinalities: list[int], prompt_length: int,
                 d_model: int, encoder_layers: int, decoder_layers: int, attention_heads: int, ffn_dim: int,
                 dropout: float, attention_dropout: float, max_length: int, pad_token_id: int, bos_token_id: int,
                 eos_token_id: int):
        super().__init__()
        if prompt_length < 1:
            raise ValueError(f"prompt_length must be >= 1, got {prompt_length}")
        config = BartConfig(
            vocab_size=vocab_size, d_model=d_model, encoder_layers=encoder_layers, decoder_layers=decoder_layers,
            encoder_attention_heads=attention_heads, decoder_attention_heads=attention_heads,
            encoder_ffn_dim=ffn_dim, decoder_ffn_dim=ffn_dim, dropout=dropout, attention_dropout=attention_dropout,
            max_position_embeddings=max_length + prompt_length,  # prompts take positions too
            pad_token_id=pad_token_id, bos_token_id=bos_token_id, eos_token_id=eos_token_id,
            decoder_start_token_id=bos_token_id, forced_bos_token_id=None, forced_eos_token_id=None,
            scale_embedding=False, use_cache=False,
        )
        self.bart = BartForConditionalGeneration(config)
        self.encoder_prompt = DemographicPrompt(n_numeric, cat_cardinalities, prompt_length, d_model)
        self.decoder_prompt = DemographicPrompt(n_numeric, cat_cardinalities, prompt_length, d_model)
        self.prompt_length, self.max_length = prompt_length, max_length

    def _with_prompt(self, prompt: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor | None):
        if ids.shape[1] > self.max_length:
            raise ValueError(f"sequence of {ids.shape[1]} tokens exceeds max_length={self.max_length}")
        embeds = torch.cat([prompt, self.bart.get_input_embeddings()(ids)], dim=1)  # [B, P + T, D]
        if mask is None:
            return embeds, None
        ones = torch.ones(mask.shape[0], self.prompt_length, dtype=mask.dtype, device=mask.device)
        return embeds, torch.cat([ones, mask], dim=1)  # [B, P + T]

    def encode(self, input_ids, attention_mask, x_num, x_cat) -> tuple[torch.Tensor, torch.Tensor]:
        """Encoder states of prompt + tokens [B, P + S, D] and their mask [B, P + S]."""
        embeds, mask = self._with_prompt(self.encoder_prompt(x_num, x_cat), input_ids, attention_mask)
        hidden = self.bart.model.encoder(inputs_embeds=embeds, attention_mask=mask.long()).last_hidden_state
        return hidden, mask

    def decode(self, decoder_input_ids, encoder_hidden, encoder_mask, x_num, x_cat, decoder_attention_mask=None,
               past_key_values=None, use_cache: bool = False):
        """Logits [B, T, V] for the tokens after each decoder input, and the cache.

        Without a cache the decoder prompt is prepended; with one (incremental sampling),
        `decoder_input_ids` are the new tokens only and the prompt is already cached.
        """
        if past_key_values is None:
            embeds, mask = self._with_prompt(self.decoder_prompt(x_num, x_cat), decoder_input_ids,
                                             decoder_attention_mask)
        else:
            embeds, mask = self.bart.get_input_embeddings()(decoder_input_ids), None
        out = self.bart.model.decoder(
            inputs_embeds=embeds, attention_mask=None if mask is None else mask.long(),
            encoder_hidden_states=encoder_hidden, encoder_attention_mask=encoder_mask.long(),
            past_key_values=past_key_values, use_cache=use_cache,
        )
        hidden = out.last_hidden_state
        if past_key_values is None:
            hidden = hidden[:, self.prompt_length:]  # [B, T, D]: the prompts predict nothing
        logits = self.bart.lm_head(hidden) + self.bart.final_logits_bias  # [B, T, V]
        return logits, out.past_key_values

    def forward(self, input_ids, attention_mask, decoder_input_ids, decoder_attention_mask, x_num, x_cat):
        hidden, mask = self.encode(input_ids, attention_mask, x_num, x_cat)
        logits, _ = self.decode(decoder_input_ids, hidden, mask, x_num, x_cat, decoder_attention_mask)
        return {"logits": logits}
