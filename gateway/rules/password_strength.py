"""How guessable a password is: zxcvbn (Dropbox's estimator, the maintained Python port),
with the account's email and name as words an attacker would try first (no I/O).

- `weakness(password, user_inputs) -> Weakness | None`: None when zxcvbn scores the
  password at least `MIN_SCORE` (3 of 4: "safely unguessable", about 10^8 guesses or
  more); else why not: zxcvbn's warning ("This is a top-10 common password.") or, when
  it gives none, its first suggestion, in English and French.
- `user_words(email, name) -> list[str]`: the words of an account that a password must
  not lean on: the address, its local part and its pieces, the name and its pieces.

zxcvbn reads at most `ZXCVBN_MAX_LENGTH` characters (it is quadratic in the length); a
longer password is judged by its first `ZXCVBN_MAX_LENGTH` characters, which can only
make the verdict stricter, never looser.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

MIN_SCORE = 3
ZXCVBN_MAX_LENGTH = 72

# zxcvbn's own English sentences (zxcvbn.feedback), in French. An unknown one (a newer
# zxcvbn) is shown in English in both languages rather than not at all.
FRENCH = {
    "Straight rows of keys are easy to guess.":
        "Les rangées de touches sont faciles à deviner.",
    "Short keyboard patterns are easy to guess.":
        "Les motifs courts sur le clavier sont faciles à deviner.",
    'Repeats like "aaa" are easy to guess.':
        "Les répétitions comme « aaa » sont faciles à deviner.",
    'Repeats like "abcabcabc" are only slightly harder to guess than "abc".':
        "Les répétitions comme « abcabcabc » sont à peine plus difficiles à deviner que "
        "« abc ».",
    'Sequences like "abc" or "6543" are easy to guess.':
        "Les suites comme « abc » ou « 6543 » sont faciles à deviner.",
    "Recent years are easy to guess.": "Les années récentes sont faciles à deviner.",
    "Dates are often easy to guess.": "Les dates sont souvent faciles à deviner.",
    "This is a top-10 common password.":
        "C'est l'un des 10 mots de passe les plus courants.",
    "This is a top-100 common password.":
        "C'est l'un des 100 mots de passe les plus courants.",
    "This is a very common password.": "C'est un mot de passe très courant.",
    "This is similar to a commonly used password.":
        "Il ressemble à un mot de passe courant.",
    "A word by itself is easy to guess.": "Un mot seul est facile à deviner.",
    "Names and surnames by themselves are easy to guess.":
        "Les prénoms et les noms seuls sont faciles à deviner.",
    "Common names and surnames are easy to guess.":
        "Les prénoms et les noms courants sont faciles à deviner.",
    "Add another word or two. Uncommon words are better.":
        "Ajoutez un mot ou deux. Les mots peu courants sont meilleurs.",
    "Use a few words, avoid common phrases.":
        "Utilisez quelques mots, évitez les expressions courantes.",
    "No need for symbols, digits, or uppercase letters.":
        "Pas besoin de symboles, de chiffres ni de majuscules.",
    "Use a longer keyboard pattern with more turns.":
        "Utilisez un motif de clavier plus long, avec plus de détours.",
    "Avoid repeated words and characters.": "Évitez les mots et les caractères répétés.",
    "Avoid sequences.": "Évitez les suites.",
    "Avoid recent years.": "Évitez les années récentes.",
    "Avoid years that are associated with you.": "Évitez les années qui vous sont liées.",
    "Avoid dates and years that are associated with you.":
        "Évitez les dates et les années qui vous sont liées.",
    "Capitalization doesn't help very much.": "Les majuscules n'aident pas beaucoup.",
    "All-uppercase is almost as easy to guess as all-lowercase.":
        "Tout en majuscules est presque aussi facile à deviner que tout en minuscules.",
    "Reversed words aren't much harder to guess.":
        "Les mots à l'envers ne sont pas beaucoup plus difficiles à deviner.",
    "Predictable substitutions like '@' instead of 'a' don't help very much.":
        "Les substitutions prévisibles comme « @ » au lieu de « a » n'aident pas beaucoup.",
}
_GENERIC = (
    "Add another word or two. Uncommon words are better.",
    FRENCH["Add another word or two. Uncommon words are better."],
)


@dataclass(frozen=True)
class Weakness:
    """Why a password is too easy to guess: zxcvbn's score (0..2) and its reason."""

    score: int
    english: str  # zxcvbn's warning, else its first suggestion ("… is easy to guess.")
    french: str

    def reason(self, language: str = "en") -> str:
        return self.french if language == "fr" else self.english


def user_words(email: str | None, name: str | None) -> list[str]:
    """The account's own words: its address, the local part and its pieces, its name and
    the name's pieces (lower-cased, each at least 3 characters), plus "sms311"."""
    words: list[str] = ["sms311"]
    for value in (email, (email or "").partition("@")[0], name):
        if value and value.strip():
            text = value.strip().lower()
            words.append(text)
            words.extend(piece for piece in re.split(r"[\W_]+", text) if len(piece) >= 3)
    return list(dict.fromkeys(words))


def weakness(password: str, user_inputs: list[str] | None = None) -> Weakness | None:
    """None when `password` scores at least `MIN_SCORE`; else why it does not."""
    from zxcvbn import zxcvbn  # its word lists take ~13 MB: loaded at the first password set

    result = zxcvbn(password[:ZXCVBN_MAX_LENGTH], user_inputs=list(user_inputs or []))
    score = int(result["score"])
    if score >= MIN_SCORE:
        return None
    feedback = result.get("feedback") or {}
    english = str(feedback.get("warning") or "")
    if not english:
        suggestions = feedback.get("suggestions") or []
        english = str(suggestions[0]) if suggestions else _GENERIC[0]
    return Weakness(score=score, english=english, french=FRENCH.get(english, english))
