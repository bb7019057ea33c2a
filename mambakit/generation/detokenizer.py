"""Incremental detokenization for streaming generated text.

Decoding each new token on its own is wrong in two ways:

* a byte-level BPE (GPT-2, GPT-NeoX, the tokenizers of
  :mod:`mambakit.tokenizer`) can split one UTF-8 character, such as a
  Chinese character or an emoji, across several tokens, and a lone token
  then decodes to U+FFFD replacement characters;
* decoders such as WordPiece and SentencePiece's Metaspace add or drop the
  space between tokens depending on the neighbouring tokens, so
  ``decode([a]) + decode([b]) != decode([a, b])``.

:class:`StreamingDetokenizer` decodes a short window of recent tokens after
each push, emits only the new suffix of the window's text, and holds back
trailing U+FFFD characters that later tokens may still complete.
"""

from __future__ import annotations

from typing import Protocol

REPLACEMENT_CHAR = "\ufffd"

# A UTF-8 character has at most 4 bytes, so an unfinished one has at most 3
# bytes, spread over at most 3 tokens.
MAX_UNFINISHED_BYTES = 3


class SupportsDecode(Protocol):
    """Any tokenizer with a ``decode(ids, skip_special_tokens=...)`` method.

    This covers :class:`mambakit.tokenizer.Tokenizer`, ``tokenizers.Tokenizer``
    and the ``transformers`` tokenizers.
    """

    def decode(self, ids: list[int], skip_special_tokens: bool = ...) -> str: ...


class StreamingDetokenizer:
    """Turn a stream of token ids into text chunks that never split a character.

    After every :meth:`push` the window of recent tokens is decoded as a
    whole, and the part of its text that follows what was already emitted is
    returned. A trailing run of U+FFFD characters is held back while later
    tokens may still complete it. :meth:`flush` returns the held-back rest
    at the end of the stream.

    The window keeps ``context_tokens`` already-emitted tokens in front of
    the new ones, so decoders that add spaces between tokens see the
    previous token. Once it is longer than ``2 * context_tokens`` tokens it
    is cut back at the next push that holds nothing back, so the cost per
    token does not grow with the stream length. Streams that hold text back
    for long (runs of invalid bytes) are cut at about
    ``4 * context_tokens + 16`` tokens.

    The concatenation of all returned chunks equals
    ``tokenizer.decode(all_ids, skip_special_tokens=...)`` for decoders whose
    output for a token depends on at most ``context_tokens`` previous tokens.
    The tests check this for the ByteLevel, WordPiece, Metaspace and
    SentencePiece-style ByteFallback decoders of the ``tokenizers`` library,
    and for random token streams (invalid bytes included) with ByteLevel.

    NOTE: a ByteFallback decoder renders a whole run of byte tokens as
    U+FFFD, valid bytes included, once any byte of the run is invalid. So
    when a model emits an invalid byte after valid byte tokens, the chunks
    keep the valid characters already emitted and differ from
    ``decode(all_ids)``. Valid UTF-8 streams are not affected.

    Args:
        tokenizer: any object with ``decode(ids, skip_special_tokens=...)``.
        skip_special_tokens: passed to ``decode``.
        context_tokens: emitted tokens kept in front of the new ones (at least 1).
    """

    def __init__(self, tokenizer: SupportsDecode, skip_special_tokens: bool = True, context_tokens: int = 8) -> None:
        if not isinstance(context_tokens, int) or context_tokens < 1:
            raise ValueError(f"context_tokens must be a positive integer, got {context_tokens!r}")
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        self.context_tokens = context_tokens
        # Window length above which a cut at an unclean point is accepted.
        self._max_window_tokens = 4 * context_tokens + 4 * (MAX_UNFINISHED_BYTES + 1)
        self.reset()

    def reset(self) -> None:
        """Drop all state, including :attr:`text`, to start a new stream."""
        # Recent token ids. The first `_emitted_chars` characters of
        # decode(_window) have been emitted already.
        self._window: list[int] = []
        self._emitted_chars = 0
        # Window length after the last push that held nothing back.
        self._stable_tokens = 0
        self._chunks: list[str] = []
        self._token_count = 0

    @property
    def text(self) -> str:
        """All text emitted so far by :meth:`push` and :meth:`flush`."""
        if len(self._chunks) > 1:
            self._chunks = ["".join(self._chunks)]
        return self._chunks[0] if self._chunks else ""

    @property
    def token_count(self) -> int:
        """Number of tokens pushed since creation or the last :meth:`reset`."""
        return self._token_count

    def push(self, token_id: int) -> str:
        """Add one token and return the text it completes.

        Args:
            token_id: the next token id (a Python int or a 0-d tensor/array).

        Returns:
            The newly completed text, possibly "" (for example after the
            first byte token of a Chinese character, or after a skipped
            special token).
        """
        self._window.append(int(token_id))
        self._token_count += 1

        window_text = self._decode(self._window)
        stable_end = len(window_text) - self._count_held_chars(window_text)
        chunk = window_text[self._emitted_chars : stable_end] if stable_end > self._emitted_chars else ""
        self._emitted_chars = max(self._emitted_chars, stable_end)
        clean = stable_end == len(window_text)
        if clean:
            self._stable_tokens = len(self._window)

        # While text is held back, a ByteFallback run may be unfinished, and
        # the window text may not line up with what was emitted. So the
        # window is cut only at clean points, or once it is longer than
        # _max_window_tokens because the stream keeps producing invalid bytes.
        if (clean and len(self._window) > 2 * self.context_tokens) or len(self._window) > self._max_window_tokens:
            self._shrink_window(window_text)

        if chunk:
            self._chunks.append(chunk)
        return chunk

    def flush(self) -> str:
        """Return the held-back text at the end of the stream and clear the window.

        Returns:
            The rest of the text. It contains U+FFFD only when the stream
            stopped in the middle of a multi-byte character, or when the
            tokens decode to U+FFFD anyway (invalid bytes, or the character
            U+FFFD itself). :attr:`text` keeps all output,
            and a later :meth:`push` starts a new window.
        """
        window_text = self._decode(self._window)
        stable_end = len(window_text) - self._count_held_chars(window_text)
        if stable_end >= self._emitted_chars:
            rest = window_text[self._emitted_chars :]
        else:
            # A ByteFallback decoder renders a whole run of byte tokens as
            # U+FFFD while its last character is unfinished, so part of the
            # emitted text now decodes as U+FFFD. Only the byte tokens after
            # the last clean point are left to decode.
            # NOTE: decode(all_ids) renders the whole run as U+FFFD here,
            # while the emitted chunks keep its finished characters.
            rest = self._decode(self._window[self._stable_tokens :])

        self._window = []
        self._emitted_chars = 0
        self._stable_tokens = 0
        if rest:
            self._chunks.append(rest)
        return rest

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=self.skip_special_tokens)

    def _count_held_chars(self, window_text: str) -> int:
        """Count the trailing characters that later tokens may still change.

        Byte-level BPE decoders render an unfinished character as one
        U+FFFD, and ByteFallback decoders render a run of byte tokens whose
        last character is unfinished as one U+FFFD per byte, so the whole
        trailing run of U+FFFD is held. A run longer than an unfinished
        character can explain is only held while dropping its last 1 to 3
        tokens gives clean text. Otherwise the bytes are invalid for good,
        and all but the last 3 characters of the run are final.
        """
        run = len(window_text) - len(window_text.rstrip(REPLACEMENT_CHAR))
        if run <= MAX_UNFINISHED_BYTES:
            return run

        for dropped in range(1, min(MAX_UNFINISHED_BYTES, len(self._window) - 1) + 1):
            if not self._decode(self._window[:-dropped]).endswith(REPLACEMENT_CHAR):
                return run
        return MAX_UNFINISHED_BYTES

    def _shrink_window(self, window_text: str) -> None:
        """Drop old tokens from the front of the window.

        A start in the middle of a character (or of a ByteFallback byte run)
        decodes to a leading U+FFFD, so such starts are skipped unless the
        window is longer than ``_max_window_tokens``. The emitted count is
        re-derived from the end, because the text still to be emitted must
        be a suffix of the shorter window's text.
        """
        if self._emitted_chars > len(window_text):
            # An unfinished ByteFallback run, see flush: wait for a clean point.
            return
        pending_text = window_text[self._emitted_chars :]

        # Keep the tokens behind held text (an unfinished character spans at
        # most MAX_UNFINISHED_BYTES tokens, plus one for an invalid byte
        # before it) and context_tokens more.
        pending_tokens = MAX_UNFINISHED_BYTES + 1 if pending_text else 0
        latest_start = len(self._window) - pending_tokens - self.context_tokens
        earliest_start = max(1, latest_start - MAX_UNFINISHED_BYTES - 1)
        accept_unclean = len(self._window) > self._max_window_tokens

        for start in range(latest_start, earliest_start - 1, -1):
            shorter = self._window[start:]
            shorter_text = self._decode(shorter)
            # The emitted part must contain visible text. A window that starts
            # with skipped special tokens decodes its first visible token as
            # the start of the text, so WordPiece and Metaspace decoders would
            # drop the space they put in front of later tokens.
            if len(shorter_text) <= len(pending_text) or not shorter_text.endswith(pending_text):
                continue
            if shorter_text.startswith(REPLACEMENT_CHAR) and not accept_unclean:
                continue
            self._window = shorter
            self._stable_tokens = max(0, self._stable_tokens - start)
            self._emitted_chars = len(shorter_text) - len(pending_text)
            return
