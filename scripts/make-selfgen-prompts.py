#!/usr/bin/env python3
"""Prompts for self-distillation (`specdec distill --self-gen-prompts`): the
model continues each, and the head learns from the model's own text in the
forms a user asks for (questions, instructions, stories, maths, code,
summaries and questions over a given text, translation).

Written for specdec (same licence as the repository), from fixed topic and
template lists below plus paragraphs of the training text (the Python
standard library's docstrings, PSF License 2.0) for the tasks that need a
passage. Not Spec-Bench: nothing here is taken from it. Deterministic.

Usage: python3 scripts/make-selfgen-prompts.py DOCS.txt OUT.txt
  DOCS.txt: the output of scripts/make-distill-data.py
  OUT.txt: one prompt per line, "\\n" for a line break inside a prompt
"""
import random
import sys

docs_path, out_path = sys.argv[1], sys.argv[2]

TOPICS = [
    "photosynthesis", "the water cycle", "black holes", "the printing press", "the Roman Empire",
    "the French Revolution", "compound interest", "binary search", "climate change", "vaccines",
    "the human heart", "volcanoes", "the stock market", "renewable energy", "the internet",
    "machine learning", "the theory of evolution", "the Great Wall of China", "jazz music",
    "the Olympic Games", "coffee", "honey bees", "the moon landing", "earthquakes",
    "electric cars", "the immune system", "supply and demand", "the Renaissance", "recycling",
    "sleep", "public libraries", "bicycles", "chess", "the Amazon rainforest", "plate tectonics",
    "the Industrial Revolution", "prime numbers", "solar panels", "friendship", "time management",
]

TEMPLATES = [
    "Explain {t} to a high school student.",
    "What are the main advantages and disadvantages of {t}?",
    "Write a short story in which {t} plays an important part.",
    "Write a persuasive essay about why everyone should learn about {t}.",
    "Question: What is the most important fact about {t}?\nAnswer:",
    "Imagine you are a tour guide. Describe {t} to a group of visitors.",
    "Give three common misconceptions about {t} and correct each one.",
    "Write a blog post titled \"Everything you need to know about {t}\".",
]

MATHS = [
    "A shop sells pencils at {a} cents each. How much do {b} pencils cost? Explain step by step.",
    "What is {a} multiplied by {b}? Show your working.",
    "A train travels {a} kilometres in {b} hours. What is its average speed?",
    "Solve for x: {a}x + {b} = {c}. Explain each step.",
    "If a rectangle is {a} metres long and {b} metres wide, what are its area and perimeter?",
    "Tom has {a} apples and gives away {b}. Then he buys {c} more. How many apples does he have?",
]

CODE = [
    "Write a Python function that returns the {n}th Fibonacci number.",
    "Write a function in C that reverses a string in place.",
    "Write a Python function that checks whether a word is a palindrome.",
    "Write a SQL query that finds the ten customers with the largest total orders.",
    "Write a JavaScript function that removes duplicate values from an array.",
    "Explain what a hash table is and write a simple one in Python.",
    "Write a Python class for a bank account with deposit and withdraw methods.",
    "Write a shell command that counts the lines in every .txt file in a directory.",
]

SENTENCES = [
    "The weather is beautiful today, so we are going to the beach.",
    "Could you tell me where the nearest train station is?",
    "My grandmother grows tomatoes and beans in her garden.",
    "The meeting has been moved to Thursday afternoon.",
    "Reading books every evening helps me relax after work.",
    "We need to buy bread, milk and eggs before the shop closes.",
]
LANGUAGES = ["French", "German", "Spanish", "Italian"]

rng = random.Random(20261128)
prompts = []
for t in TOPICS:
    for tpl in TEMPLATES:
        prompts.append(tpl.format(t=t))
for tpl in MATHS:
    for _ in range(4):
        a, b = rng.randint(3, 97), rng.randint(2, 40)
        prompts.append(tpl.format(a=a, b=b, c=a * rng.randint(2, 9) + b))
for tpl in CODE:
    prompts.append(tpl.format(n="n"))
for s in SENTENCES:
    for lang in LANGUAGES:
        prompts.append(f"Translate the following sentence into {lang}: {s}")

# Tasks over a passage: paragraphs of the docstrings, cut to ~500 characters.
text = open(docs_path, encoding="utf-8").read()
paras = [p.strip() for p in text.split("\n\n") if 200 <= len(p.strip()) <= 600 and "    " not in p and "\\" not in p]
rng.shuffle(paras)
passage_tasks = [
    "Summarize the following text in two sentences.\n\n{p}\n\nSummary:",
    "{p}\n\nBased on the text above, what is its main purpose?",
    "Read the passage and answer the question.\n\nPassage: {p}\n\nQuestion: What does the passage describe?\nAnswer:",
    "Extract the key terms from the following text and explain each briefly.\n\n{p}",
]
for i, p in enumerate(paras[:48]):
    prompts.append(passage_tasks[i % len(passage_tasks)].format(p=p))

with open(out_path, "w", encoding="utf-8") as f:
    for p in prompts:
        assert "\\" not in p
        f.write(p.replace("\n", "\\n") + "\n")
print(f"{len(prompts)} prompts -> {out_path}")
