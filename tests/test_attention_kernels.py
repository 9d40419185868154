"""The attention processor and the row-chunked feed-forward give bit-identical values to the
plain diffusers computation they replace."""
import pytest
import torch
from diffusers.models.attention import FeedForward
from diffusers.models.attention_processor import Attention, AttnProcessor2_0

from vexpress_core.models import chunking
from vexpress_core.models.attention import VExpressTransformerBlock
from vexpress_core.models.motion import TemporalSelfAttention
from vexpress_core.models.processor import VExpressAttnProcessor

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def attention_pair(seed=0, **options):
    torch.manual_seed(seed)
    ours = Attention(query_dim=32, heads=8, dim_head=4, processor=VExpressAttnProcessor(), **options).eval()
    published = Attention(query_dim=32, heads=8, dim_head=4, processor=AttnProcessor2_0(), **options).eval()
    published.load_state_dict(ours.state_dict())
    return ours, published


@pytest.mark.parametrize("bias", [False, True])
def test_self_attention_is_bit_identical(bias):
    ours, published = attention_pair(bias=bias)
    hidden = torch.randn(6, 50, 32)
    with torch.no_grad():
        assert torch.equal(ours(hidden), published(hidden))


def test_cross_attention_is_bit_identical():
    ours, published = attention_pair(seed=1, cross_attention_dim=24)
    hidden, context = torch.randn(3, 40, 32), torch.randn(3, 7, 24)
    with torch.no_grad():
        assert torch.equal(ours(hidden, context), published(hidden, context))


def test_masks_and_non_plain_attentions_use_diffusers_own_processor():
    ours, published = attention_pair(rescale_output_factor=2.0, residual_connection=True)
    hidden = torch.randn(2, 10, 32)
    mask = torch.zeros(2, 1, 10).masked_fill(torch.arange(10) > 6, float("-inf"))
    with torch.no_grad():
        assert torch.equal(ours(hidden), published(hidden))
        assert torch.equal(ours(hidden, attention_mask=mask), published(hidden, attention_mask=mask))
        assert not torch.equal(ours(hidden), ours(hidden, attention_mask=mask))


def test_the_models_attentions_use_the_processor():
    block = VExpressTransformerBlock(32, 8, 4, 24)
    for attention in (block.attn1, block.attn1_5, block.attn2, TemporalSelfAttention(32, 8, 24)):
        assert isinstance(attention.processor, VExpressAttnProcessor)


def test_row_chunked_feed_forward_is_bit_identical():
    torch.manual_seed(2)
    ff, norm = FeedForward(32, activation_fn="geglu").eval(), torch.nn.LayerNorm(32)
    tokens = torch.randn(4, 300, 32)

    def layer(x):
        return ff(norm(x))

    with torch.no_grad():
        whole = tokens + layer(tokens)
        chunked = chunking.residual_in_row_chunks(layer, tokens, rows=256)
    assert chunked.shape == tokens.shape
    assert torch.equal(chunked, whole)


def test_row_chunking_keeps_one_call_for_training():
    calls = []

    def layer(x):
        calls.append(x.shape)
        return x * 2

    tokens = torch.randn(10, 32, requires_grad=True)
    chunking.residual_in_row_chunks(layer, tokens, rows=4).sum().backward()
    assert calls == [torch.Size([10, 32])]
    assert torch.equal(tokens.grad, torch.full_like(tokens, 3.0))
