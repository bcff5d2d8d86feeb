"""English or French? A small deterministic detector for SMS (no I/O).

``detect(text, default)`` scores the words of a text against two short lists of words that are
common in 311 texts and typical of one language only (function words, greetings, city-service
vocabulary, contractions such as "j'" or "don't"). French accents add a point, once per text,
so that a place name ("Montréal") alone does not switch an English resident to French.

A language wins only with a lead of ``MARGIN`` points; otherwise (short, unclear or mixed
texts, numbers, place names, postal codes) the answer is ``default``, the resident's kept
language. Deterministic: same text, same default, same answer.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Literal

Language = Literal["en", "fr"]

MARGIN = 2.0


def _set(words: str) -> frozenset[str]:
    return frozenset(words.split())


# Weight 2: words that alone say which language it is. Weight 1: common, typical words.
_FR_STRONG = _set(
    """
    bonjour bonsoir allo allô salut merci oui non svp stp plait plaît je j' nous vous
    est sont avec pour dans chez très aussi mais depuis encore toujours jamais rien
    nid poule nids déneigement deneigement déchets dechets ordures poubelle poubelles bac
    trottoir lampadaire feu feux égout egout aqueduc fuite eau chaussée chaussee voisin voisins
    habite demeure suis ville quartier ruelle coin devant derrière derriere
    """
)
_FR_WEAK = _set(
    """
    le la les de des du un une au aux à en sur et ou il elle ils elles ce cette ces mon ma mes
    ton ta tes son sa ses notre votre leur qui que quoi quand comment où ne pas plus
    rue boul boulevard av avenue chemin rang parc pont arrêt neige glace bruit chien
    chat stationnement voiture auto camion déneigeuse deneigeuse collecte recyclage
    hier semaine jours matin soir collecte ramassé ramassée ramassés ramassées arbre
    maison besoin brisé brisée cassé cassée bouché bouchée panne
    """
)
_EN_STRONG = _set(
    """
    hello hi hey thanks thank please yes yeah the is are was were there there's it's
    i i'm im i've don't doesn't can't won't isn't what where when why how
    pothole potholes garbage trash recycling sidewalk streetlight snow plow plowed
    neighbour neighbor neighbours neighbors broken missing live
    """
)
_EN_WEAK = _set(
    """
    a an and or of to in on at for with my our your his her their this that these those
    it we you he she they has have had been be not no from by near outside front back
    street st road rd ave avenue drive dr lane park bridge water leak light lights noise
    dog cat parking car truck week days morning night since yesterday still again
    missed bin bins picked pickup collection tree trees house yard waste call someone need
    """
)
# French words also frequent in English texts (place names, loans): no evidence either way.
_NEUTRAL = frozenset({"a", "on", "avenue", "parc", "y", "bus", "ave", "av", "plus"})

_FR_ACCENTS = frozenset("éèêëàâîïôûùçœÉÈÊÀÂÎÔÛÇŒ")
_FR_ELISIONS = re.compile(r"\b(?:j|l|d|qu|n|c|s|m|t)['’]\w", re.IGNORECASE)
_WORD = re.compile(r"[\w'’]+")


def _words(text: str) -> list[str]:
    words = []
    for raw in _WORD.findall(text.casefold()):
        word = raw.replace("’", "'")
        words.append(word)
        if "'" in word:  # "j'habite" -> also "j'", "habite"; "don't" stays whole
            head, _, tail = word.partition("'")
            if len(head) <= 2 and tail:
                words.extend([head + "'", tail])
    return words


def scores(text: str) -> tuple[float, float]:
    """(French score, English score) of ``text``; exposed for tests and tuning."""
    text = unicodedata.normalize("NFC", text)
    fr = en = 0.0
    for word in _words(text):
        if word in _NEUTRAL:
            continue
        if word in _FR_STRONG:
            fr += 2
        elif word in _FR_WEAK:
            fr += 1
        if word in _EN_STRONG:
            en += 2
        elif word in _EN_WEAK:
            en += 1
    if any(ch in _FR_ACCENTS for ch in text):
        fr += 1
    if _FR_ELISIONS.search(text):
        fr += 1
    return fr, en


def detect(text: str, default: Language = "en") -> Language:
    """"fr" or "en" when the text says so clearly, else ``default``."""
    fr, en = scores(text)
    if fr - en >= MARGIN:
        return "fr"
    if en - fr >= MARGIN:
        return "en"
    return default
