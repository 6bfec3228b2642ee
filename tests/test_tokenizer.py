"""The 44-token character tokenizer: exact vocabulary, whole-dataset round trip, and clear out-of-vocabulary errors."""
from __future__ import annotations
import string

import pytest

from wm_nb.core import WMError
from wm_nb.mixtures import build_mixture
from wm_nb.tokenizer import (save_tokenizer, load_tokenizer, check_roundtrip, encode, decode, build_tokenizer,
                             OutOfVocabularyError, VOCAB)

EXPECTED = ['<bos>', '<eos>', '<pad>', '(', ')', ',', '=', '_'] + list('abcdefghijklmnopqrstuvwxyz') + list('0123456789')


@pytest.fixture(scope='module')
def tok(tmp_path_factory):
    path = tmp_path_factory.mktemp('tok')/'wm_tokenizer'
    save_tokenizer(path)
    return load_tokenizer(path)


@pytest.fixture(scope='module')
def default_datasets(default_cities):
    "The default datasets, generated in-process: loc --all (128 val), dist and walk with 100,000 train (1,000 val)."
    spec = lambda t, n, v: {'tasks': {t: {'n': n, 'val': v}}}
    return {'loc': build_mixture(default_cities, spec('loc', 'all', 128))[0],
            'dist': build_mixture(default_cities, spec('dist', 100_000, 1000))[0],
            'walk': build_mixture(default_cities, spec('walk', 100_000, 1000))[0]}


def test_vocab_exact(tok):
    assert len(EXPECTED) == 44 and len(set(EXPECTED)) == 44
    assert VOCAB == EXPECTED
    assert len(tok) == 44
    assert tok.convert_ids_to_tokens(list(range(44))) == EXPECTED
    assert tok.convert_tokens_to_ids(EXPECTED) == list(range(44))
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (0, 1, 2)


def test_encode_ids(tok):
    text = 'loc(c_12)=3,9'
    ids = encode(tok, text)
    assert ids == [0] + [EXPECTED.index(ch) for ch in text]          # <bos> and the characters: a prompt stays a prompt
    assert encode(tok, text, add_special_tokens=False) == ids[1:]
    assert decode(tok, ids) == text
    assert ' ' not in tok.decode(ids)   # even with special tokens kept, no spaces are inserted


@pytest.mark.parametrize('task', ['loc', 'dist', 'walk'])
def test_whole_dataset_round_trip(tok, default_datasets, task):
    dsd = default_datasets[task]
    expected_rows = {'loc': (6204, 128), 'dist': (100_000, 1000), 'walk': (100_000, 1000)}[task]
    assert (dsd['train'].num_rows, dsd['validation'].num_rows) == expected_rows
    for split, ds in dsd.items():
        assert check_roundtrip(tok, ds['text'], where=f'{task}/{split}') == ds.num_rows


def test_round_trip_check_is_not_vacuous(tok, default_datasets):
    "A tokenizer whose decoder puts spaces between tokens (the default for word-level models) fails the check."
    broken = build_tokenizer()
    broken.backend_tokenizer.decoder = None
    texts = default_datasets['dist']['train']['text'][:100]
    with pytest.raises(AssertionError, match='round-trips to'): check_roundtrip(broken, texts)


@pytest.mark.parametrize('text,char,pos', [
    ('loc(c_1)=A,3', "'A'", 9),
    ('dist(c_1, c_2)=5', "' '", 9),
    ('srd_200=c_1,c_2\n', "'\\n'", 15),
    ('loc(c_é)=1,2', "'é'", 6),
    ('-loc', "'-'", 0),
])
def test_out_of_vocabulary(tok, text, char, pos):
    with pytest.raises(OutOfVocabularyError) as e: encode(tok, text)
    msg = str(e.value)
    assert isinstance(e.value, WMError)
    assert f'character {char}' in msg and f'position {pos} ' in msg, msg
    assert f'U+{ord(text[pos]):04X}' in msg


def test_out_of_vocabulary_in_dataset_names_row(tok):
    texts = ['loc(c_1)=2,3', 'loc(c_2)=2,3', 'loc(c_3)=2;3']
    with pytest.raises(OutOfVocabularyError, match=r"mine row 2: character ';' .* at position 10"):
        check_roundtrip(tok, texts, batch_size=2, where='mine')


def test_load_tokenizer_errors(tmp_path):
    with pytest.raises(WMError, match='not found'): load_tokenizer(tmp_path/'nope')
    save_tokenizer(tmp_path/'t')
    with pytest.raises(WMError, match='already exists'): save_tokenizer(tmp_path/'t')
