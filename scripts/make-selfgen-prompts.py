#!/usr/bin/env python3
"""Prompts for self-distillation (`specdec distill --self-gen-prompts`): the
model continues each, and the head learns from the model's own text in the
forms a user asks for (questions, instructions, stories, maths, code,
summaries and questions over a given text, translation).

Written for specdec (same licence as the repository), from fixed topic and
template lists below plus paragraphs of the training text (the Python
standard library's docstrings, PSF License 2.0) for the tasks that need a
passage. Not Spec-Bench: nothing here is taken from it. Deterministic.

Usage: python3 scripts/make-selfgen-prompts.py [--more] DOCS.txt OUT.txt
  DOCS.txt: the output of scripts/make-distill-data.py
  OUT.txt: one prompt per line, "\\n" for a line break inside a prompt
  --more: 1,380 more prompts after the same 424 (session 12's experiment,
          docs/heads.md; the shipped head uses the 424)
"""
import random
import sys

args = sys.argv[1:]
more = "--more" in args
docs_path, out_path = [a for a in args if a != "--more"]

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

# ---- Session 12 (--more): more prompts, in the proportions and forms of the requests a
# user sends (short factual questions, word problems, translation, long passages
# to summarize or answer from), all written for specdec. ----
MORE_TOPICS = [
    "the Silk Road", "antibiotics", "glaciers", "the steam engine", "origami", "tea ceremonies",
    "the Pythagorean theorem", "ancient Egypt", "coral reefs", "wind turbines", "the Cold War",
    "democracy", "inflation", "the periodic table", "bird migration", "the telescope", "DNA",
    "the Moon", "Mars exploration", "rain forests", "deserts", "the ocean tides", "gravity",
    "electricity", "magnets", "the Internet of Things", "cloud computing", "cybersecurity",
    "social media", "video games", "the piano", "opera", "impressionist painting", "architecture",
    "the Eiffel Tower", "football", "marathon running", "yoga", "nutrition", "vitamins",
    "bread baking", "cheese making", "urban gardening", "composting", "electric guitars",
    "photography", "film making", "podcasts", "online learning", "remote work", "startups",
    "banking", "cryptocurrency", "insurance", "taxes", "elections", "human rights",
    "the United Nations", "world trade", "shipping containers", "airplanes", "rockets",
    "satellites", "weather forecasting", "hurricanes", "droughts", "forests", "wolves",
    "dolphins", "elephants", "penguins", "ants", "mushrooms", "the brain", "memory",
    "language learning", "mathematics education", "robots", "self-driving cars", "3D printing",
]
NEW_TEMPLATES = [
    "Draft a professional email to your manager proposing a workshop on {t}.",
    "Describe the history of {t} in a few paragraphs.",
    "How has {t} changed over the last hundred years?",
    "Create a lesson plan for a one-hour class about {t}.",
    "Write a dialogue between two friends who disagree about {t}.",
    "Pretend you are a famous scientist. Give a short speech about {t}.",
    "What would the world look like without {t}? Discuss.",
    "List five interesting facts about {t}.",
    "Write a poem about {t}.",
]
# The first templates less the question-answer one, then the new ones.
MORE_TEMPLATES = [t for t in TEMPLATES if not t.startswith("Question:")] + NEW_TEMPLATES
ROLES = [
    "a pirate captain", "a detective in London", "a medieval knight", "a friendly robot", "a travel agent",
    "a personal fitness coach", "a chef in a busy restaurant", "a history teacher", "a stand-up comedian",
    "a doctor", "a marriage counsellor", "a startup founder pitching to investors", "a librarian",
]
ROLE_TASKS = [
    "Take on the role of {r}. Introduce yourself and describe a typical day.",
    "You are {r}. A customer asks you for advice. What do you tell them?",
    "Act as {r} and answer the question: what is the hardest part of your job?",
]
COUNTRIES = [
    "France", "Japan", "Brazil", "Canada", "Egypt", "India", "Kenya", "Mexico", "Norway", "Peru",
    "Poland", "Spain", "Thailand", "Turkey", "Vietnam", "Argentina", "Australia", "Chile", "Greece",
    "Ireland", "Italy", "Morocco", "Nigeria", "Portugal", "Sweden",
]
QA = [
    "What is the capital of {c}?", "What language is spoken in {c}?", "What is the currency of {c}?",
    "Who was the first president or leader of {c}?", "What is the largest city in {c}?",
    "What is the population of {c}?", "When did {c} join the United Nations?",
]
QA_MISC = [
    "Who invented the telephone?", "Who painted the Mona Lisa?", "How many planets are in the solar system?",
    "What is the boiling point of water in Fahrenheit?", "Who wrote Pride and Prejudice?",
    "When did the Second World War end?", "What is the tallest mountain in Africa?",
    "How many bones are in the human body?", "Who discovered penicillin?", "What is the speed of light?",
    "Which planet is known as the red planet?", "Who was the first person to walk on the moon?",
    "What is the longest river in the world?", "How many players are on a basketball team?",
    "What is the chemical symbol for gold?", "Who composed the Four Seasons?",
    "What year did the Titanic sink?", "Which ocean is the largest?", "Who wrote Romeo and Juliet?",
    "What is the smallest prime number?", "Where are the Olympic Games held in 2028?",
    "Who sang Thriller?", "What does a botanist study?", "How long does it take the Earth to orbit the Sun?",
    "What is the hardest natural substance?", "Who is the author of the Harry Potter books?",
    "What kind of animal is a whale?", "When was the first iPhone released?",
    "Who played the lead role in the movie Titanic?", "What is the main ingredient of guacamole?",
]
NAMES = ["Anna", "Ben", "Carla", "David", "Emma", "Farid", "Grace", "Hiro", "Ines", "Jack", "Lena", "Marco"]
GSM = [
    "{n} buys {a} notebooks for ${b} each and a backpack for ${c}. How much does {n} spend in total?",
    "{n} reads {a} pages every day. The book has {c} pages. After {b} days, how many pages are left?",
    "A bakery makes {a} loaves of bread each morning and sells {b} of them by noon. In the afternoon it sells half of what is left. How many loaves remain?",
    "{n} earns ${a} per hour and works {b} hours a week. How much does {n} earn in four weeks?",
    "A farmer has {a} chickens and {b} cows. How many legs do the animals have altogether?",
    "{n} saves ${a} each week. How many weeks will it take to save ${c}?",
    "A class has {a} students. {b} of them walk to school and the rest take the bus. If each bus holds 20 students, how many buses are needed?",
    "{n} runs {a} kilometres on Monday, twice as far on Tuesday and {b} kilometres on Wednesday. How far does {n} run in the three days?",
    "A shirt costs ${c}. It is on sale for {a} percent off. What is the sale price?",
    "{n} has {c} marbles and shares them equally among {b} friends. How many marbles does each friend get, and how many are left over?",
    "A recipe needs {a} grams of flour for 4 people. How much flour is needed for {b} people?",
    "There are {a} cars in a car park. {b} leave and then {c} more arrive. How many cars are there now?",
]
CODE_MORE = [
    "Write a C++ program that sorts an array of integers with bubble sort.",
    "Write a Python function that counts the words in a text file.",
    "Here is a Python function that should return the maximum of a list, but it has a bug:\n\ndef largest(xs):\n    m = 0\n    for x in xs:\n        if x > m:\n            m = x\n    return m\n\nFind the bug and fix it.",
    "Write a Java method that checks whether a number is prime.",
    "Implement binary search in Python and explain its running time.",
    "Write a Python script that reads a CSV file and prints the average of the second column.",
    "Write a function that merges two sorted lists into one sorted list.",
    "Explain the difference between a list and a tuple in Python, with examples.",
    "Write a regular expression that matches email addresses and explain it.",
    "Write a Rust function that returns the sum of the squares of a slice of integers.",
    "Write a Python function that finds the longest common prefix of a list of strings.",
    "Write an HTML page with a form that asks for a name and an email address.",
]
GERMAN = [
    "Der Zug nach Berlin fährt heute mit einer Verspätung von zwanzig Minuten ab .",
    "Die Stadtverwaltung plant , im nächsten Jahr drei neue Schulen zu bauen .",
    "Am Wochenende besuchten mehr als zehntausend Menschen das Musikfestival am See .",
    "Der Minister sagte , die Verhandlungen würden in der kommenden Woche fortgesetzt .",
    "Das Museum ist von Dienstag bis Sonntag jeweils von zehn bis achtzehn Uhr geöffnet .",
    "Die Preise für Strom und Gas sind in den letzten Monaten deutlich gestiegen .",
    "Nach dem Spiel feierten die Fans ihre Mannschaft bis spät in die Nacht .",
    "Das Hotel liegt nur wenige Gehminuten vom Strand und vom Stadtzentrum entfernt .",
    "Die Forscher haben eine neue Methode entwickelt , um Wasser günstiger zu reinigen .",
    "Wegen des starken Schneefalls blieben viele Straßen in den Bergen gesperrt .",
    "Die Firma will bis zum Jahresende zweihundert neue Mitarbeiter einstellen .",
    "Im Garten hinter dem Haus wachsen Äpfel , Birnen und Kirschen .",
    "Der Bürgermeister eröffnete die neue Brücke mit einer kurzen Rede .",
    "Viele Studenten arbeiten neben dem Studium , um ihre Miete bezahlen zu können .",
    "Die Polizei bittet Zeugen des Unfalls , sich bei der nächsten Dienststelle zu melden .",
    "Das Konzert musste wegen eines Gewitters nach einer Stunde abgebrochen werden .",
    "Unsere Zimmer sind hell , ruhig und mit kostenlosem Internet ausgestattet .",
    "Die Regierung hat ein neues Gesetz zum Schutz der Wälder beschlossen .",
    "Er hat sein ganzes Leben in einem kleinen Dorf an der Nordsee verbracht .",
    "Die Ausstellung zeigt Gemälde und Zeichnungen aus dem neunzehnten Jahrhundert .",
    "Bitte schalten Sie Ihr Mobiltelefon während der Vorstellung aus .",
    "Die Kinder spielten den ganzen Nachmittag im Park Fußball .",
    "Der Flughafen wird in den nächsten Jahren für mehrere Milliarden Euro erweitert .",
    "Sie empfahl ihm , mehr Gemüse zu essen und jeden Tag spazieren zu gehen .",
    "Die Zahl der Arbeitslosen ist im vergangenen Monat leicht gesunken .",
    "In der Altstadt gibt es viele kleine Geschäfte , Cafés und Restaurants .",
    "Das Unternehmen meldete für das dritte Quartal einen Rekordgewinn .",
    "Die Bibliothek bietet jeden Samstag Lesestunden für Kinder an .",
    "Nach langen Diskussionen einigten sich die Parteien auf einen Kompromiss .",
    "Der Tunnel verbindet die beiden Städte und verkürzt die Fahrzeit um eine halbe Stunde .",
]


def add_more(prompts, paras, rng):
    for t in MORE_TOPICS:
        for tpl in rng.sample(MORE_TEMPLATES, 6):
            prompts.append(tpl.format(t=t))
    for t in TOPICS:
        for tpl in rng.sample(NEW_TEMPLATES, 3):
            prompts.append(tpl.format(t=t))
    for r in ROLES:
        for tpl in ROLE_TASKS:
            prompts.append(tpl.format(r=r))
    for c in COUNTRIES:
        for tpl in QA:
            prompts.append(tpl.format(c=c))
    prompts.extend(QA_MISC)
    for tpl in GSM:
        for _ in range(16):
            a, b = rng.randint(3, 60), rng.randint(2, 12)
            prompts.append(tpl.format(n=rng.choice(NAMES), a=a, b=b, c=a * b + rng.randint(5, 90)))
    prompts.extend(CODE_MORE)
    for s in GERMAN:
        prompts.append(f"Translate German to English: {s}")
    for s in SENTENCES:
        for lang in ["Portuguese", "Dutch"]:
            prompts.append(f"Translate the following sentence into {lang}: {s}")
    # Two German sentences at once, as longer inputs.
    for i in range(len(GERMAN)):
        prompts.append(f"Translate German to English: {GERMAN[i]} {GERMAN[(i * 7 + 3) % len(GERMAN)]}")
    more_tasks = [
        "Summarize: {p}",
        "Summarize: {p}",
        "{p}\n\nQuestion: What is this text about?\nAnswer:",
        "{p}\n\nAccording to the text, what should a programmer keep in mind?",
        "Given the following text, list the important names it mentions.\n\n{p}",
    ]
    short = [p for p in paras[48:] if len(p) <= 450]
    for i, p in enumerate(short[:260]):
        prompts.append(more_tasks[i % len(more_tasks)].format(p=p))


if more:
    add_more(prompts, paras, rng)

with open(out_path, "w", encoding="utf-8") as f:
    for p in prompts:
        assert "\\" not in p
        f.write(p.replace("\n", "\\n") + "\n")
print(f"{len(prompts)} prompts -> {out_path}")
