"""The ISIC 2018 label vocabulary shared by data, models, metrics and outputs.

Order matters: it is the column order of the ISIC 2018 Task 3 ground-truth and
submission CSVs (image,MEL,NV,BCC,AKIEC,BKL,DF,VASC), so class index i always
means CLASSES[i].
"""

CLASSES = ("MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC")

CLASS_NAMES = {
    "MEL": "melanoma",
    "NV": "melanocytic nevus",
    "BCC": "basal cell carcinoma",
    "AKIEC": "actinic keratosis / intraepithelial carcinoma",
    "BKL": "benign keratosis",
    "DF": "dermatofibroma",
    "VASC": "vascular lesion",
}

# HAM10000's metadata spells diagnoses in lower case (dx column).
DX_TO_CLASS = {code.lower(): code for code in CLASSES}

# ISIC 2018 Task 2 dermoscopic attributes, in the order of the model's output
# channels. File names use these spellings: ISIC_xxxxxxx_attribute_<name>.png.
ATTRIBUTES = ("pigment_network", "negative_network", "streaks", "milia_like_cyst", "globules")

TASKS = ("multitask", "attributes", "segmentation", "classification")
