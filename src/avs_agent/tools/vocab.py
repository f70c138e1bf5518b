"""Closed vocabularies of the lite models and how they relate.

COCO-80 is YOLOX's class order; VOC-21 is DeepLabV3's. ``COCO_TO_VOC`` says which VOC class paints a
COCO object's pixels (None: VOC has no such class; the box's foreground is used instead).
``DESCRIPTIONS`` gives each COCO class a few names and the sounds it makes, so a sentence embedding
can match free phrases and AudioSet labels onto it (prompt ensembling, as CLIP's zero-shot
classification does with class names). ``KINDS`` says what each COCO class is (animal, person or thing,
from COCO's supercategories), so a sound from the ontology's 'Animal' branch never lands on a thing.
"""

COCO80 = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
    "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee",
    "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard",
    "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase",
    "scissors", "teddy bear", "hair drier", "toothbrush",
)  # fmt: skip

VOC21 = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)  # fmt: skip

COCO_TO_VOC: dict[str, str | None] = {c: None for c in COCO80} | {
    "person": "person", "bicycle": "bicycle", "car": "car", "motorcycle": "motorbike", "airplane": "aeroplane",
    "bus": "bus", "train": "train", "truck": "car", "boat": "boat", "bird": "bird", "cat": "cat", "dog": "dog",
    "horse": "horse", "sheep": "sheep", "cow": "cow", "bottle": "bottle", "chair": "chair", "couch": "sofa",
    "potted plant": "pottedplant", "dining table": "diningtable", "tv": "tvmonitor",
}  # fmt: skip

VOC_TO_COCO: dict[str, str] = {}
for _coco, _voc in COCO_TO_VOC.items():
    if _voc:
        VOC_TO_COCO.setdefault(_voc, _coco)
"""VOC class -> the first COCO class it paints (COCO order): the one name a DeepLab-only region gets."""

# Extra names per class. The class name itself is always included. Sounds are named the way AudioSet
# names them ("speech", "bark", "engine"), so an AudioSet label lands on the object that makes it.
# A sound name here also lends the object to everything under the AudioSet node it matches (the
# matcher walks a label's ancestors), so it names a node whose sounds this object makes: 'engine'
# stays (Idling, Accelerating, Engine starting ...; the three light-engine tools under it are the
# price); 'bicycle bell' and 'tap water' are not among the names (they would match 'Bell' and 'Water',
# and make a bicycle of every Chime, Jingle bell and Church bell and a sink of Rain, Ocean and Stream;
# the labels 'Bicycle bell' and 'Water tap, faucet' name their objects by the objects' own names).
# Vehicles are named by their kinds' names, so a siren lands on its vehicle ('police car',
# 'ambulance') and 'Jet engine' on the airplane, not through 'engine' on the car; 'fire truck' is
# not one of them: it matches 'Fire' and 'Crackle' too.
DESCRIPTIONS: dict[str, list[str]] = {
    "person": [
        "man",
        "woman",
        "child",
        "baby",
        "people",
        "human",
        "singer",
        "speaker",
        "human voice",
        "speech",
        "children",
        "kids",
        "crowd",
        "laughter",
        "crying",
        "sneeze",
        "cough",
        "footsteps",
    ],
    "bicycle": ["bike"],
    "car": ["automobile", "car engine", "motor vehicle", "car horn", "engine", "police car"],
    "motorcycle": ["motorbike", "scooter", "moped", "motorcycle engine", "engine"],
    "airplane": ["aircraft", "aeroplane", "jet", "plane engine", "jet engine"],
    "bus": ["coach bus"],
    "train": ["locomotive", "railway train", "train horn"],
    "truck": ["lorry", "pickup truck", "truck engine", "ambulance"],
    "boat": ["ship", "motorboat", "sailboat"],
    "bird": ["songbird", "rooster", "chicken", "fowl", "poultry", "duck", "pigeon", "bird song"],
    "cat": ["kitten", "meow", "purr"],
    "dog": ["puppy", "bark", "dog bark", "howl"],
    "horse": ["pony", "neigh", "clip-clop"],
    "sheep": ["lamb", "bleat"],
    "cow": ["cattle", "moo"],
    "elephant": ["trumpeting elephant"],
    "sports ball": ["ball", "football", "basketball"],
    "tennis racket": ["racket"],
    "cell phone": ["mobile phone", "telephone", "ringtone"],
    "clock": ["alarm clock", "tick-tock"],
    "keyboard": ["computer keyboard", "typing"],
    "tv": ["television", "monitor"],
    "hair drier": ["hair dryer", "blow dryer"],
    "toilet": ["toilet flush"],
    "microwave": ["microwave oven"],
    "sink": ["faucet"],
    "scissors": ["shears"],
}


RIDDEN: tuple[str, ...] = (
    "bicycle",
    "motorcycle",
    "horse",
    "elephant",
    "skateboard",
    "scooter",
    "motorbike",
    "camel",
    "donkey",
)
"""Objects a person rides (COCO's and the open vocabulary's): their rider can be part of the sounding
unit (agent/decision/ ``join_riders``)."""
RIDERS: tuple[str, ...] = ("person", "man", "woman", "boy", "girl", "child", "rider")
"""Names of a person who may ride one of ``RIDDEN``."""

COCO_ANIMALS = ("bird", "cat", "dog", "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe")
"""COCO's 'animal' supercategory."""

COCO_SUPERCATEGORY: dict[str, str] = {
    c: sup
    for sup, members in {
        "person": ("person",),
        "vehicle": ("bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat"),
        "outdoor": ("traffic light", "fire hydrant", "stop sign", "parking meter", "bench"),
        "animal": COCO_ANIMALS,
        "accessory": ("backpack", "umbrella", "handbag", "tie", "suitcase"),
        "sports": (
            "frisbee", "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove",
            "skateboard", "surfboard", "tennis racket",
        ),
        "kitchen": ("bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl"),
        "food": (
            "banana", "apple", "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake",
        ),
        "furniture": ("chair", "couch", "potted plant", "bed", "dining table", "toilet"),
        "electronic": ("tv", "laptop", "mouse", "remote", "keyboard", "cell phone"),
        "appliance": ("microwave", "oven", "toaster", "sink", "refrigerator"),
        "indoor": ("book", "clock", "vase", "scissors", "teddy bear", "hair drier", "toothbrush"),
    }.items()
    for c in members
}  # fmt: skip
"""COCO class -> its supercategory, as COCO's annotation files give it. A detector mistakes one class
for another of its own supercategory (a small dog for a bird, a car for a truck), rarely across."""

KINDS: dict[str, str] = (
    {c: "thing" for c in COCO80} | {a: "animal" for a in COCO_ANIMALS} | {"person": "person"}
)
"""COCO class -> 'animal' | 'person' | 'thing' (vehicles, furniture, electronics ... are things)."""


# Objects that make sounds and can be seen: the AVSBench / AVSS classes plus common sound sources.
OPEN_VOCABULARY: tuple[str, ...] = (
    # people
    "man",
    "woman",
    "boy",
    "girl",
    "baby",
    "child",
    "person",
    "singer",
    "crowd",
    # animals
    "dog",
    "cat",
    "bird",
    "chicken",
    "rooster",
    "duck",
    "goose",
    "horse",
    "cow",
    "sheep",
    "goat",
    "pig",
    "donkey",
    "lion",
    "tiger",
    "elephant",
    "wolf",
    "monkey",
    "frog",
    "owl",
    "parrot",
    "crow",
    "pigeon",
    "seal",
    "whale",
    "dolphin",
    "bee",
    "insect",
    "mouse",
    "squirrel",
    # instruments
    "guitar",
    "acoustic guitar",
    "electric guitar",
    "bass guitar",
    "ukulele",
    "banjo",
    "harp",
    "piano",
    "keyboard",
    "organ",
    "accordion",
    "violin",
    "cello",
    "double bass",
    "flute",
    "clarinet",
    "saxophone",
    "trumpet",
    "trombone",
    "tuba",
    "french horn",
    "harmonica",
    "bagpipes",
    "drum",
    "drum kit",
    "snare drum",
    "tabla",
    "marimba",
    "xylophone",
    "glockenspiel",
    "cymbal",
    "gong",
    "bell",
    "tambourine",
    "erhu",
    "guzheng",
    "pipa",
    "sitar",
    "microphone",
    "loudspeaker",
    # vehicles and machines
    "car",
    "race car",
    "truck",
    "bus",
    "ambulance",
    "fire truck",
    "police car",
    "motorcycle",
    "bicycle",
    "train",
    "tram",
    "airplane",
    "helicopter",
    "boat",
    "ship",
    "tractor",
    "lawn mower",
    "chainsaw",
    "drill",
    "hammer",
    "saw",
    "vacuum cleaner",
    "hair dryer",
    "blender",
    "washing machine",
    "sewing machine",
    "fan",
    "engine",
    "siren",
    "horn",
    # household and other
    "clock",
    "alarm clock",
    "phone",
    "telephone",
    "computer",
    "keyboard",
    "typewriter",
    "television",
    "radio",
    "door",
    "toilet",
    "faucet",
    "water",
    "fountain",
    "waterfall",
    "fire",
    "fireworks",
    "gun",
    "ball",
    "tennis racket",
    "whistle",
    "kettle",
    "pan",
    "cup",
    "glass",
    "toy",
    "robot",
)


def open_vocabulary() -> list[str]:
    """Object names the rule-based reasoner may propose in the full (open-vocabulary) profile."""
    return list(dict.fromkeys(OPEN_VOCABULARY))
