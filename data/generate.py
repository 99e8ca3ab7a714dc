"""Generate PEFT Lab's two authored instruction datasets (deterministic: fixed seeds).

    orders: one free-text order sentence  -> one JSON object with 6 fields in a fixed key order
    sql:    one question about a tiny shop database -> one SQLite query

Run from the repository root:  python data/generate.py   (rewrites data/<task>/*.jsonl)
The same seed always gives byte-identical files; tests/test_data.py checks that.
Every line is {"id", "instruction", "input", "output"}; the instruction goes into
the system message, the input is the user message, the output is the answer.
See data/DATASHEET.md for what the fields mean and why the task looks like this.
"""
from __future__ import annotations

import json
import random
from pathlib import Path

HERE = Path(__file__).resolve().parent
SEED = 2024
SIZES = {"train": 2000, "validation": 200, "test": 200}

FIRST = ("Maya Liam Noah Emma Olivia Ava Lucas Mia Ethan Zoe Leo Nora Omar Lena Ivan Sara Hugo Ines "
         "Yuki Ravi Aisha Chen Pablo Greta Tomas Elif Kofi Anya Mateo Freya Jonas Priya Diego Hana "
         "Felix Amara Oscar Lila Samir Vera Erik Nadia Bruno Clara Arjun Mila Theo Rosa Kai Alma").split()
LAST = ("Lopez Smith Novak Tanaka Okafor Berg Rossi Silva Kim Meyer Haddad Costa Ivanova Nguyen Patel "
        "Dubois Fischer Moreau Jensen Kowalski Garcia Sato Ali Brown Larsen Romero Weber Petrov Santos "
        "Evans Lindqvist Mensah Ortiz Vogel Horvat Demir Reyes Ahmed Falk Quinn").split()
ITEMS = ("green tea|coffee beans|olive oil|rice|paper towels|printer paper|dog food|oat milk|soap|"
         "batteries|light bulbs|candles|honey|flour|pasta|chocolate|apples|lemons|tomatoes|sugar|"
         "salt|peanut butter|notebooks|pencils|tape|glue|sponges|tissues|shampoo|toothpaste|"
         "cereal|jam|crackers|walnuts|raisins|ink cartridges|cat litter|bird seed|garden soil|seeds").split("|")
CITIES = ("Lisbon Oslo Berlin Madrid Paris Rome Vienna Prague Dublin Warsaw Athens Helsinki Zurich "
          "Munich Porto Lyon Milan Seville Krakow Riga Tallinn Vilnius Geneva Hamburg Bergen Malmo "
          "Gdansk Turin Naples Bordeaux Toronto Boston Denver Austin Chicago Seattle Dallas Miami "
          "Osaka Seoul").split()
DAYS = "Monday Tuesday Wednesday Thursday Friday Saturday Sunday".split()
CONTAINERS = "boxes bags packs jars bottles crates cans cartons".split()
URGENT = ("urgently", "as soon as possible", "asap", "it's a rush order", "this is urgent",
          "with priority")

# {u} is an urgency phrase (with its own leading punctuation) or "" for a normal order.
ORDER_TEMPLATES = (
    "Please send {q} {c} of {i} to {n} in {city} on {d}{u}.",
    "{n} from {city} wants {q} {c} of {i} delivered on {d}{u}.",
    "Deliver {q} {c} of {i} to {n}, {city}, on {d}{u}.",
    "On {d}, ship {q} {c} of {i} to {n} in {city}{u}.",
    "New order: {q} {c} of {i} for {n} ({city}), delivery {d}{u}.",
    "Can you get {q} {c} of {i} to {n} in {city} by {d}{u}?",
    "{n} ordered {q} {c} of {i}; deliver to {city} on {d}{u}.",
    "Ship to {city}: {q} {c} of {i} for {n}, {d}{u}.",
    "For {n} in {city}: {q} {c} of {i}, arriving {d}{u}.",
    "{d} delivery to {city}: {n} needs {q} {c} of {i}{u}.",
    "Hi, this is {n} in {city}. I'd like {q} {c} of {i} on {d}{u}.",
    "Put {q} {c} of {i} on the {d} van to {city} for {n}{u}.",
    "Order from {n}: {q} {c} of {i}, {city}, {d}{u}.",
    "{q} {c} of {i} for {n}, please - {city}, {d}{u}.",
    "Book {q} {c} of {i} for {n}; the address is in {city}; day {d}{u}.",
    "We need {q} {c} of {i} sent to {n} at the {city} office on {d}{u}.",
)
ORDERS_INSTRUCTION = "Extract the order as JSON."


def _urgency(rng: random.Random) -> tuple[str, str]:
    if rng.random() < 0.4:
        return ", " + rng.choice(URGENT), "high"
    return "", "normal"


def order_example(rng: random.Random) -> tuple[str, str]:
    name = f"{rng.choice(FIRST)} {rng.choice(LAST)}"
    item, city, day = rng.choice(ITEMS), rng.choice(CITIES), rng.choice(DAYS)
    qty = rng.randint(1, 20)
    cont = rng.choice(CONTAINERS)
    u_text, priority = _urgency(rng)
    text = rng.choice(ORDER_TEMPLATES).format(q=qty, c=cont, i=item, n=name, city=city, d=day, u=u_text)
    # Fixed key order, compact but readable separators: the answer is one deterministic string.
    answer = json.dumps({"name": name, "item": item, "qty": qty, "city": city, "day": day,
                         "priority": priority})
    return text, answer


# --- sql: questions about customers(name, city), orders(name, item, qty, day), products(item, price)
SQL_INSTRUCTION = ("Write one SQLite query. Tables: customers(name, city), "
                   "orders(name, item, qty, day), products(item, price).")


def sql_example(rng: random.Random) -> tuple[str, str]:
    city, day, item = rng.choice(CITIES), rng.choice(DAYS), rng.choice(ITEMS)
    name = f"{rng.choice(FIRST)} {rng.choice(LAST)}"
    n, price = rng.randint(2, 10), rng.randint(2, 40)
    kind = rng.randrange(7)
    if kind == 0:
        q = rng.choice(["List all customers in {city}.", "Who are our customers in {city}?",
                        "Show every customer from {city}."]).format(city=city)
        return q, f"SELECT name FROM customers WHERE city = '{city}';"
    if kind == 1:
        q = rng.choice(["How many customers live in {city}?", "Count the customers in {city}.",
                        "What is the number of customers from {city}?"]).format(city=city)
        return q, f"SELECT COUNT(*) FROM customers WHERE city = '{city}';"
    if kind == 2:
        q = rng.choice(["How many orders were placed on {day}?", "Count the orders for {day}.",
                        "Number of orders on {day}?"]).format(day=day)
        return q, f"SELECT COUNT(*) FROM orders WHERE day = '{day}';"
    if kind == 3:
        q = rng.choice(["What did {name} order?", "Show the items ordered by {name}.",
                        "List {name}'s orders."]).format(name=name)
        return q, f"SELECT item, qty FROM orders WHERE name = '{name}';"
    if kind == 4:
        q = rng.choice(["Which products cost less than {p} dollars?", "Products under ${p}?",
                        "List the products cheaper than {p}."]).format(p=price)
        return q, f"SELECT item FROM products WHERE price < {price};"
    if kind == 5:
        q = rng.choice(["Show the {n} most expensive products.", "Top {n} products by price?",
                        "What are the {n} priciest products?"]).format(n=n)
        return q, f"SELECT item FROM products ORDER BY price DESC LIMIT {n};"
    q = rng.choice(["Who ordered {item} on {day}?", "Which customers bought {item} on {day}?",
                    "Names of people who ordered {item} on {day}?"]).format(item=item, day=day)
    return q, f"SELECT name FROM orders WHERE item = '{item}' AND day = '{day}';"


TASKS = {"orders": (order_example, ORDERS_INSTRUCTION), "sql": (sql_example, SQL_INSTRUCTION)}


def build(task: str, seed: int = SEED) -> dict[str, list[dict]]:
    """All splits of one task. Inputs are unique across splits, so no test prompt is a train prompt."""
    make, instruction = TASKS[task]
    rng = random.Random(f"{task}-{seed}")  # str seeds hash deterministically (no PYTHONHASHSEED)
    seen: set[str] = set()
    out: dict[str, list[dict]] = {}
    for split, size in SIZES.items():
        rows: list[dict] = []
        while len(rows) < size:
            text, answer = make(rng)
            if text in seen:  # the sql task has few distinct questions per kind: skip repeats
                continue
            seen.add(text)
            rows.append({"id": f"{task}-{split}-{len(rows):05d}", "instruction": instruction,
                         "input": text, "output": answer})
        out[split] = rows
    return out


def write(root: Path = HERE, seed: int = SEED) -> list[Path]:
    paths = []
    for task in TASKS:
        for split, rows in build(task, seed).items():
            path = root / task / f"{split}.jsonl"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
            paths.append(path)
    return paths


if __name__ == "__main__":
    for p in write():
        print(f"wrote {p.relative_to(HERE.parent)}: {sum(1 for _ in p.open())} lines")
