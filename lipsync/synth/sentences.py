"""Sentence banks for the synthetic corpus, split so held-out material is never trained on.

Sentences whose index is a multiple of 5 form the "test" split; the rest are "train".
"""

from __future__ import annotations

import numpy as np

SENTENCES: dict[str, list[str]] = {
    "en": [
        "The quick brown fox jumps over the lazy dog.",
        "Please call me back when you get this message.",
        "We will meet at the old bridge before sunrise.",
        "My favourite colour has always been deep blue.",
        "Open the window, it is getting warm in here.",
        "Bob bought a big bag of bread and butter.",
        "She sells sea shells by the sea shore.",
        "How much wood would a woodchuck chuck?",
        "The weather today is cloudy with a chance of rain.",
        "I would like a cup of coffee with milk, please.",
        "Mary made marmalade from the mangoes in May.",
        "Turn left at the second traffic light.",
        "Our team won the final match by two points.",
        "Could you repeat that a little more slowly?",
        "Peter piped a peck of pickled peppers.",
        "The museum opens at nine and closes at five.",
        "Water boils at one hundred degrees.",
        "We are waiting for the train to Boston.",
        "Every morning I walk the dog in the park.",
        "Thank you very much for your help yesterday.",
        "Do you know where I can find a good book shop?",
        "The moon moved slowly over the quiet harbour.",
        "Happy birthday, I hope all your wishes come true.",
        "Fresh fish and chips are sold on Friday.",
        "Maybe we should wait until the rain stops.",
        "Put the papers back on my desk, please.",
        "All the lights went out at midnight.",
        "Why would anyone want to leave so early?",
        "The baby was sleeping in the warm blue room.",
        "You can pay by card or with cash.",
        "Old memories of summer make me smile.",
        "Wow, what a wonderful view from up here!",
        "Please remember to lock the door when you leave.",
        "The pilot announced a short delay.",
        "A small boat floated on the calm lake.",
    ],
    "es": [
        "Buenos días, ¿cómo estás hoy?",
        "Me gusta mucho pasear por la playa.",
        "La comida está lista, vamos a la mesa.",
        "Mañana vamos a visitar a mi abuela.",
        "El perro pequeño juega en el parque.",
        "¿Puedes abrir la ventana, por favor?",
        "Mi madre prepara una paella muy buena.",
        "El tren sale a las ocho de la mañana.",
        "Hace mucho calor en el verano de Madrid.",
        "Para mí, un café con leche, por favor.",
        "Los niños cantan canciones en la escuela.",
        "Pablo pinta paisajes preciosos.",
        "Vamos a bailar toda la noche.",
        "El libro está encima de la mesa.",
        "Muchas gracias por tu ayuda.",
        "¿Dónde está la estación de autobuses?",
        "Mi hermano vive en Barcelona.",
        "La luna brilla sobre el mar.",
        "Quiero comprar pan y manzanas.",
        "Nos vemos el próximo lunes.",
    ],
    "zh": [
        "你好，很高兴认识你。",
        "今天天气很好，我们去公园吧。",
        "我喜欢喝茶，也喜欢喝咖啡。",
        "请问火车站怎么走？",
        "妈妈做的饭菜非常好吃。",
        "明天早上八点开会。",
        "他每天骑自行车上班。",
        "这本书很有意思。",
        "我们一起去看电影吧。",
        "谢谢你的帮助。",
        "北京的冬天很冷。",
        "小猫在沙发上睡觉。",
        "你吃过晚饭了吗？",
        "我的朋友住在上海。",
        "周末我想去爬山。",
        "学习中文很有趣。",
        "请把门关上。",
        "外面下雨了，带上伞吧。",
        "这家饭馆的面条很好吃。",
        "我们明年再见。",
    ],
    "fr": [
        "Bonjour, comment allez-vous aujourd'hui?",
        "Je voudrais un café, s'il vous plaît.",
        "Nous partons en vacances demain matin.",
        "Le chat dort sur le canapé.",
        "Il fait très beau ce week-end.",
        "Où se trouve la gare, s'il vous plaît?",
        "Ma sœur habite à Paris.",
        "Merci beaucoup pour votre aide.",
        "Le musée ouvre à neuf heures.",
        "Papa prépare une bonne soupe.",
    ],
    "de": [
        "Guten Morgen, wie geht es Ihnen?",
        "Ich möchte ein Glas Wasser, bitte.",
        "Wir fahren morgen nach Berlin.",
        "Das Wetter ist heute sehr schön.",
        "Der Hund spielt im Garten.",
        "Wo ist der Bahnhof, bitte?",
        "Meine Mutter backt einen Kuchen.",
        "Vielen Dank für Ihre Hilfe.",
        "Das Buch liegt auf dem Tisch.",
        "Wir sehen uns am Montag.",
    ],
}

LANG_WEIGHTS = {"en": 0.45, "es": 0.2, "zh": 0.2, "fr": 0.075, "de": 0.075}


def sentences(lang: str, split: str = "train") -> list[str]:
    if split not in ("train", "test", "all"):
        raise ValueError(f"unknown split {split!r}: use train, test or all")
    bank = SENTENCES[lang]
    if split == "all":
        return list(bank)
    return [s for i, s in enumerate(bank) if (i % 5 == 0) == (split == "test")]


def pick_language(rng: np.random.Generator, langs: list[str] | None = None) -> str:
    langs = langs or list(LANG_WEIGHTS)
    w = np.array([LANG_WEIGHTS.get(lang, 0.1) for lang in langs])
    return str(rng.choice(langs, p=w / w.sum()))
