"""language.detect on realistic 311 texts in English and French."""

from __future__ import annotations

import pytest

from gateway.rules.language import detect

ENGLISH = [
    "There is a pothole on Bank St",
    "There's a huge pothole in front of 123 Main Street, my tire blew",
    "Garbage wasn't picked up this week on Elm Ave",
    "The streetlight at the corner of King and Queen is out",
    "Hi, my recycling bin was stolen last night",
    "Snow plow missed our street again",
    "Can someone clear the sidewalk on Rideau? It's all ice",
    "Water leak on the road near the school",
    "My neighbour's dog barks all night, who do I call?",
    "Broken swing at the park on Carling",
    "Hello, when is the next yard waste pickup?",
    "The traffic light at Bank and Somerset is stuck on red",
    "Someone dumped a couch in the lane behind my house",
    "Thanks for fixing it so fast!",
    "I live in Kanata and my street hasn't been plowed",
    "There is graffiti on the bus shelter at Laurier",
    "Tree branch down across the bike path",
    "Is the water safe to drink? It looks brown",
    "Please send someone, the sewer is backing up into my basement",
    "Noise complaint: construction started at 5am",
    "Missed green bin collection on Maple Dr",
    "Yes",
    "no thanks",
    "Thank you",
    "Dead raccoon on the side of the road by 44 Oak St",
    "Parking enforcement needed, cars blocking my driveway",
    "How do I get a new blue box?",
    "The crosswalk button is broken",
    "Hydrant leaking water onto the sidewalk",
    "Potholes all along Montreal Rd near the Rideau river",
    "I'm in Montréal, there is a pothole on rue Sherbrooke",
    "Street sign knocked over at the end of our street",
]

FRENCH = [
    "Il y a un nid-de-poule sur la rue Bank",
    "Bonjour, les ordures n'ont pas été ramassées cette semaine",
    "Le lampadaire au coin de la rue est brûlé",
    "Déneigement pas fait sur notre rue depuis hier",
    "Mon bac de recyclage a été volé",
    "Il y a une fuite d'eau devant chez moi",
    "Merci beaucoup!",
    "Oui",
    "non merci",
    "J'habite à Gatineau et la rue n'est pas déneigée",
    "Le trottoir est glacé, c'est dangereux",
    "Bruit de construction à 5h du matin",
    "Quelqu'un a jeté un divan dans la ruelle derrière chez nous",
    "Le feu de circulation est en panne au coin de Saint-Denis",
    "Est-ce que la collecte des déchets est reportée?",
    "Mon voisin fait du bruit toute la nuit",
    "Graffiti sur l'abribus de la rue Laurier",
    "Une branche est tombée sur la piste cyclable",
    "L'eau est brune, est-ce qu'on peut la boire?",
    "Égout bouché, ça refoule dans mon sous-sol",
    "Bac brun pas ramassé sur la rue des Érables",
    "Bonjour",
    "Allo, quand est la prochaine collecte des feuilles?",
    "Stationnement interdit, des autos bloquent mon entrée",
    "Comment avoir un nouveau bac bleu?",
    "Le bouton du passage piéton ne fonctionne plus",
    "Borne-fontaine qui fuit sur le trottoir",
    "Nids-de-poule partout sur le boulevard",
    "Je suis à Ottawa, il y a un trou dans la chaussée",
    "Panneau d'arrêt renversé au bout de notre rue",
    "svp envoyez quelqu'un, c'est urgent",
    "Raton laveur mort au bord du chemin",
]

# Short or unclear: the kept language wins.
UNCLEAR = [
    "Montréal",
    "Québec",
    "Ottawa",
    "K1A 0B1",
    "H2X1Y4",
    "2",
    "ok",
    "",
    "   ",
    "Saint-Jean-sur-Richelieu",
    "Trois-Rivières",
    "Victoria BC",
    "👍",
    "Bank St",
]


@pytest.mark.parametrize("text", ENGLISH)
def test_english_texts(text: str) -> None:
    assert detect(text, default="fr") == "en"


@pytest.mark.parametrize("text", FRENCH)
def test_french_texts(text: str) -> None:
    assert detect(text, default="en") == "fr"


@pytest.mark.parametrize("text", UNCLEAR)
@pytest.mark.parametrize("default", ["en", "fr"])
def test_unclear_texts_keep_the_default(text: str, default: str) -> None:
    assert detect(text, default=default) == default  # type: ignore[arg-type]


def test_accuracy_on_the_whole_corpus() -> None:
    """Whatever the default, at least 95% of the labelled texts come out right."""
    labelled = [(t, "en") for t in ENGLISH] + [(t, "fr") for t in FRENCH]
    for default in ("en", "fr"):
        right = sum(detect(t, default=default) == lang for t, lang in labelled)  # type: ignore[arg-type]
        assert right / len(labelled) >= 0.95


def test_deterministic_and_default_is_en() -> None:
    assert detect("il y a un nid-de-poule") == "fr"
    assert detect("1") == "en"
    assert all(detect("Le trottoir est glacé") == "fr" for _ in range(5))


def test_curly_apostrophes() -> None:
    assert detect("J’habite à Laval, c’est la rue des Pins") == "fr"
    assert detect("It’s been three weeks, the light’s still out", default="fr") == "en"
