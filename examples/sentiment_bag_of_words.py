"""Sentiment from word counts, the lecture's motivating example at its real size: every review
becomes a bag of words (scikit-learn's CountVectorizer: one column per word of the
vocabulary, the word's count in the review), a sparse matrix with a few dozen non-zeros a row
among thousands of columns. fastmlp's MLPClassifier trains on it as it is (CSR, only the
non-zeros are read) and, for comparison, on the same matrix made dense: the same model, the
same accuracy, and the sparse one faster and in a fraction of the memory.

The corpus is generated (no download): reviews of products with invented names, whose words
are drawn from positive, negative and neutral lists; a review's label is the sentiment of the
words it was written with, a tenth of the labels flipped as noise.

    python examples/sentiment_bag_of_words.py [--reviews 3000] [--seed 0]
"""

import argparse
import time
import warnings

import numpy as np

import fastmlp

POSITIVE = ("good great love excellent wonderful fun nice like best amazing perfect happy "
            "recommend favourite brilliant pleasant superb solid reliable enjoy").split()
NEGATIVE = ("bad awful hate terrible boring poor worst angry broken useless disappointing "
            "cheap refund waste slow ugly noisy flimsy annoying regret").split()
NEUTRAL = ("the a it this that was is and but with for of on in to my i we they box arrived "
           "day week use used bought ordered price delivery colour size battery screen").split()


def generate_reviews(n_reviews: int, seed: int):
    """(texts, labels): label 1 for positive reviews, 0 for negative."""
    rng = np.random.default_rng(seed)
    # Thousands of invented product and brand names: the long tail of a real vocabulary.
    names = [f"{rng.choice(list('bcdfgklmnprstvz'))}{rng.choice(list('aeiou'))}"
             f"{rng.choice(list('bcdfgklmnprstvz'))}{i}" for i in range(8000)]
    texts, labels = [], []
    for _ in range(n_reviews):
        label = int(rng.integers(0, 2))
        length = int(rng.integers(15, 60))
        mood = POSITIVE if label else NEGATIVE
        other = NEGATIVE if label else POSITIVE
        words = []
        for _ in range(length):
            kind = rng.random()
            if kind < 0.15:
                words.append(rng.choice(mood))
            elif kind < 0.19:
                words.append(rng.choice(other))
            elif kind < 0.35:
                words.append(names[int(rng.integers(0, len(names)))])
            else:
                words.append(rng.choice(NEUTRAL))
        texts.append(" ".join(words))
        labels.append(label if rng.random() > 0.1 else 1 - label)
    return texts, np.array(labels)


def new_classifier(seed: int):
    # A strong L2 penalty: a few thousand reviews, a vocabulary of thousands of words.
    return fastmlp.MLPClassifier(hidden_layer_sizes=(64,), batch_size=32, max_iter=20,
                                 alpha=1e-2, random_state=seed)


def main(argv=None):
    from sklearn.feature_extraction.text import CountVectorizer
    from sklearn.model_selection import train_test_split

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reviews", type=int, default=3000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    texts, labels = generate_reviews(args.reviews, args.seed)
    train_texts, test_texts, y_train, y_test = train_test_split(
        texts, labels, test_size=0.25, random_state=args.seed, stratify=labels)
    vectorizer = CountVectorizer()
    X_train = vectorizer.fit_transform(train_texts)  # scipy CSR, word counts
    X_test = vectorizer.transform(test_texts)
    print(f"{len(texts)} reviews, vocabulary {len(vectorizer.vocabulary_):,} words, "
          f"{X_train.nnz / X_train.shape[0]:.0f} non-zeros a row "
          f"({100 * X_train.nnz / np.prod(X_train.shape):.2f} % of the matrix)")

    results = {}
    for name, (train, test) in {"sparse": (X_train, X_test),
                                "dense": (X_train.toarray(), X_test.toarray())}.items():
        model = new_classifier(args.seed)
        started = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # max_iter reached: a ConvergenceWarning
            model.fit(train, y_train)
        seconds = time.perf_counter() - started
        megabytes = (train.data.nbytes + train.indices.nbytes + train.indptr.nbytes
                     if name == "sparse" else train.nbytes) / 1e6
        results[name] = model.predict(test)
        print(f"{name:>6}: test accuracy {model.score(test, y_test):.3f}, fit {seconds:.2f} s, "
              f"X_train {megabytes:,.1f} MB")
    agree = np.mean(results["sparse"] == results["dense"])
    print(f"the two models agree on {100 * agree:.1f} % of the test reviews")

    model = new_classifier(args.seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.fit(X_train, y_train)
    for review in ["great screen and the battery is excellent, I recommend it",
                   "arrived broken, awful and noisy, I want a refund",
                   "the box arrived on a day of the week"]:
        p = model.predict_proba(vectorizer.transform([review]))[0, 1]
        print(f"P(positive) = {p:.2f}  {review!r}")


if __name__ == "__main__":
    main()
