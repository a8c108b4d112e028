"""The lecture's toy sentiment classifier: a sentence becomes two numbers — how many positive
words and how many negative words it holds — and a tiny MLP ([2, 3, 3]: 2 inputs, 3 hidden
ReLU units, 3 classes) learns happy / sad / neutral from them.

    python examples/sentiment_toy.py
"""

import re

import numpy as np

import fastmlp

CLASSES = ["happy", "sad", "neutral"]
POSITIVE = {"good", "great", "love", "happy", "wonderful", "fun", "nice", "excellent", "like"}
NEGATIVE = {"bad", "awful", "hate", "sad", "terrible", "boring", "poor", "worst", "angry"}


def features(sentence: str) -> list[int]:
    """[count of positive words, count of negative words]."""
    words = re.findall(r"[a-z']+", sentence.lower())
    return [sum(w in POSITIVE for w in words), sum(w in NEGATIVE for w in words)]


def training_set():
    """Every pair of counts 0..4 (25 points), labelled happy when positive words outnumber
    negative ones, sad when it is the other way round, neutral when they balance."""
    X, y = [], []
    for positive in range(5):
        for negative in range(5):
            X.append([positive, negative])
            y.append(0 if positive > negative else 1 if negative > positive else 2)
    return np.array(X, dtype=np.float32), np.array(y)


def main():
    X, y = training_set()
    model = fastmlp.MLP([2, 3, 3], seed=3)
    model.fit(X, y, epochs=400, batch_size=5, optimizer=fastmlp.Adam(lr=0.02), seed=0)
    print(f"training accuracy {model.score(X, y):.2f} on {len(y)} count pairs")

    sentences = [
        "What a wonderful day, I love it",
        "The food was awful and the service was terrible",
        "The train leaves at nine",
        "Good acting, but a boring and bad plot",
        "Great fun, nice people, excellent music",
        "I like the start but hate the ending",
    ]
    counts = np.array([features(s) for s in sentences], dtype=np.float32)
    probabilities = model.predict_proba(counts)
    for sentence, count, p in zip(sentences, counts.astype(int), probabilities):
        k = int(np.argmax(p))
        print(f"{CLASSES[k]:>7} ({p[k]:.2f})  +{count[0]} -{count[1]}  {sentence!r}")


if __name__ == "__main__":
    main()
