"""Word lists for the task suite, written for this project.

People's first names and surnames are split per data split so that no person occurs in both
train and test. Occupations, places, companies and hobbies are shared: they are attributes,
not identities. Knowledge-conflict subjects are split too; their candidate new objects are
shared.
"""

from __future__ import annotations

__all__ = [
    "COMPANIES",
    "FEMALE_NAMES",
    "FILLERS",
    "HOBBIES",
    "KC_FACTS",
    "KC_OBJECTS",
    "MALE_NAMES",
    "OCCUPATIONS",
    "PLACES",
    "SURNAMES",
]

# Invented-sounding first names, by the pronoun the bio uses, per split.
FEMALE_NAMES: dict[str, tuple[str, ...]] = {
    "train": (
        "Maren", "Isolde", "Tamsin", "Odette", "Linnea", "Briony", "Calla", "Delphine",
        "Fenna", "Greer", "Ilse", "Junia", "Kestra", "Liesel", "Mirela", "Nerys", "Orla",
        "Perpetua", "Rosalind", "Saoirse",
    ),
    "test": (
        "Aveline", "Brisa", "Coralie", "Dagny", "Elowen", "Freya", "Gwenna", "Halla", "Imke",
        "Jessamy", "Katla", "Lumi", "Marisol", "Noemi", "Ottilie", "Pernille", "Rhiannon",
        "Sunniva", "Tindra", "Verity",
    ),
}  # fmt: skip
MALE_NAMES: dict[str, tuple[str, ...]] = {
    "train": (
        "Tobin", "Alaric", "Bram", "Caspian", "Dorian", "Evander", "Fintan", "Gideon",
        "Hollis", "Idris", "Jasper", "Kenzo", "Lorcan", "Matthias", "Nestor", "Osric",
        "Pascal", "Quillon", "Rafferty", "Soren",
    ),
    "test": (
        "Anselm", "Birger", "Cormac", "Dashiell", "Emrys", "Florian", "Gunnar", "Hamish",
        "Ignatius", "Jory", "Kasimir", "Leopold", "Mordecai", "Niall", "Oswin", "Peregrine",
        "Ronan", "Stellan", "Thaddeus", "Ulric",
    ),
}  # fmt: skip
SURNAMES: dict[str, tuple[str, ...]] = {
    "train": (
        "Oswick", "Aldery", "Brackwell", "Dunsmore", "Fairweather", "Greyling", "Hartigan",
        "Ivesdale", "Jessop", "Kilbride", "Lowther", "Marchbank", "Nettleford", "Orrin",
        "Pellow", "Quarrell", "Rathbone", "Selwyn", "Thorncroft", "Umberley", "Vantongeren",
        "Wexley", "Yarrow", "Zielinski", "Castellane",
    ),
    "test": (
        "Ashdown", "Blythe", "Carrow", "Delacourt", "Everleigh", "Fenwick", "Gallowmere",
        "Holloway", "Inchcombe", "Jarrow", "Kestler", "Larkham", "Merriweather", "Northcott",
        "Ockenden", "Pembury", "Quenby", "Redfearn", "Stanway", "Tolliver", "Underhill",
        "Varga", "Whitcombe", "Yelland", "Zorn",
    ),
}  # fmt: skip

# Single article rule ("an" before a vowel letter) holds for every entry.
OCCUPATIONS: tuple[str, ...] = (
    "architect", "nurse", "pharmacist", "carpenter", "journalist", "accountant", "electrician",
    "librarian", "photographer", "dentist", "veterinarian", "translator", "baker", "pilot",
    "chemist", "surveyor", "florist", "plumber", "economist", "geologist", "paramedic",
    "tailor", "sculptor", "astronomer", "welder", "optician", "locksmith", "cartographer",
    "zoologist", "beekeeper",
)  # fmt: skip

# Invented towns; none contains a person's name or an occupation.
PLACES: tuple[str, ...] = (
    "Quenford", "Tallow Ridge", "Brisk Harbor", "Elmsworth", "Veyport", "Ashmere",
    "Dunmarrow", "Sorrel Point", "Kestrel Falls", "Penhallow", "Wyncliffe", "Oakhurst Vale",
    "Marlow Reach", "Thistlebury", "Greymoor", "Larchmont Sands", "Rookhaven", "Fallowby",
)  # fmt: skip

# Invented companies; no commas, so a target answer naming one passes the no-comma check.
COMPANIES: tuple[str, ...] = (
    "Brightwell Logistics", "Corvane Systems", "Tesselate Labs", "Fernbrook Dairy",
    "Ironvale Foundry", "Lumen Crest Studios", "Pellbury Press", "Quarrystone Builders",
    "Silverfin Fisheries", "Bluegate Analytics", "Kettleby Mills", "Harbourlight Clinic",
    "Mossgrove Gardens", "Redwick Aviation", "Tidewater Surveys", "Copperleaf Bakery",
)  # fmt: skip

HOBBIES: tuple[str, ...] = (
    "sailing", "growing tomatoes", "playing the cello", "birdwatching", "restoring old radios",
    "chess", "long-distance running", "baking sourdough", "painting watercolours", "hiking",
    "collecting stamps", "rock climbing", "knitting", "amateur astronomy",
)  # fmt: skip

# Neutral filler sentences for the long format-constraint contexts. They use {city} and
# {company} and never mention the person, so they add length, not answers.
FILLERS: tuple[str, ...] = (
    "{city} sits on a wide river and has two old stone bridges.",
    "The library in {city} opens at nine every morning.",
    "{company} was founded more than thirty years ago.",
    "Most people in {city} travel by bicycle or tram.",
    "The market in the main square sells bread and fish and flowers on Saturdays.",
    "Winters in {city} are long and quiet.",
    "Last year {company} moved into a new building near the station.",
    "A small museum in {city} shows old maps of the coast.",
    "The nearest airport is about an hour away by train.",
    "The weather this spring has been mild and dry.",
    "A new bakery opened on the corner of the high street in {city}.",
    "The annual summer fair in {city} draws visitors from the nearby villages.",
)  # fmt: skip

# Knowledge conflict: well-known facts (subject, true object) per relation and split. The
# context will state a different object from the relation's pool. Subjects are phrased for
# the middle of a sentence ("the Colosseum"); no subject contains an object of its pool.
KC_FACTS: dict[str, dict[str, tuple[tuple[str, str], ...]]] = {
    "location": {
        "train": (
            ("the Eiffel Tower", "Paris"), ("the Colosseum", "Rome"), ("Big Ben", "London"),
            ("the Brandenburg Gate", "Berlin"), ("the Statue of Liberty", "New York"),
            ("the Acropolis", "Athens"), ("the Golden Gate Bridge", "San Francisco"),
            ("the Kremlin", "Moscow"), ("the Forbidden City", "Beijing"),
            ("the Sagrada Familia", "Barcelona"),
        ),
        "test": (
            ("the Louvre", "Paris"), ("the Space Needle", "Seattle"), ("the CN Tower", "Toronto"),
            ("the Burj Khalifa", "Dubai"), ("the Hagia Sophia", "Istanbul"),
            ("Buckingham Palace", "London"), ("the Trevi Fountain", "Rome"),
            ("the Atomium", "Brussels"), ("the Parthenon", "Athens"),
            ("the Little Mermaid statue", "Copenhagen"),
        ),
    },
    "language": {
        "train": (
            ("France", "French"), ("Germany", "German"), ("Japan", "Japanese"),
            ("Brazil", "Portuguese"), ("Italy", "Italian"), ("Russia", "Russian"),
            ("Greece", "Greek"), ("Turkey", "Turkish"), ("Poland", "Polish"),
            ("Sweden", "Swedish"),
        ),
        "test": (
            ("Spain", "Spanish"), ("Portugal", "Portuguese"), ("China", "Chinese"),
            ("the Netherlands", "Dutch"), ("Finland", "Finnish"), ("Hungary", "Hungarian"),
            ("South Korea", "Korean"), ("Thailand", "Thai"), ("Egypt", "Arabic"),
            ("Norway", "Norwegian"),
        ),
    },
    "maker": {
        "train": (
            ("the iPhone", "Apple"), ("Windows", "Microsoft"), ("the PlayStation", "Sony"),
            ("Android", "Google"), ("the Corolla", "Toyota"), ("Photoshop", "Adobe"),
            ("the Macintosh", "Apple"), ("the Galaxy phone line", "Samsung"),
        ),
        "test": (
            ("the Xbox", "Microsoft"), ("Gmail", "Google"), ("the Walkman", "Sony"),
            ("the Mustang", "Ford"), ("the Civic", "Honda"), ("the Kindle", "Amazon"),
            ("the Game Boy", "Nintendo"), ("the Beetle", "Volkswagen"),
        ),
    },
}  # fmt: skip

# Candidate new objects per relation, shared by both splits.
KC_OBJECTS: dict[str, tuple[str, ...]] = {
    "location": (
        "Paris", "Rome", "London", "Berlin", "New York", "Athens", "San Francisco", "Moscow",
        "Beijing", "Barcelona", "Seattle", "Toronto", "Dubai", "Istanbul", "Brussels",
        "Copenhagen", "Tokyo", "Madrid", "Vienna", "Cairo", "Lisbon", "Sydney", "Mumbai",
        "Chicago", "Prague", "Stockholm",
    ),
    "language": (
        "French", "German", "Japanese", "Portuguese", "Italian", "Russian", "Greek", "Turkish",
        "Polish", "Swedish", "Spanish", "Chinese", "Dutch", "Finnish", "Hungarian", "Korean",
        "Thai", "Arabic", "Norwegian", "Hindi", "Danish", "Czech",
    ),
    "maker": (
        "Apple", "Microsoft", "Sony", "Google", "Toyota", "Adobe", "Samsung", "Ford", "Honda",
        "Amazon", "Nintendo", "Volkswagen", "IBM", "Intel", "Nokia", "Philips", "Siemens",
    ),
}  # fmt: skip
