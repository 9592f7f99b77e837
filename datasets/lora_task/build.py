"""Write the weather-to-JSON fine-tuning task (train.jsonl, heldout.jsonl). Deterministic: run it again and the
files come out byte for byte the same.

    python datasets/lora_task/build.py

Each row is {"sentence": a short weather report in plain English, "answer": the JSON the assistant must reply with}.
The held-out split uses cities, and sentence patterns, that never appear in training, so a high held-out score
means the model learned the format, not the rows. Written for this course (no third-party text); CC0.
"""

import json
import random
from pathlib import Path

TRAIN_CITIES = [
    "Lisbon", "Oslo", "Cairo", "Lima", "Hanoi", "Dublin", "Nairobi", "Quito", "Osaka", "Perth", "Denver", "Porto",
    "Seville", "Zurich", "Kraków", "Bergen", "Tunis", "Bogotá", "Manila", "Boston", "Leeds", "Turin", "Accra",
    "Havana", "Riga", "Malmö", "Dakar", "Sapporo", "Calgary", "Lyon", "Gdańsk", "Muscat", "Hobart", "Tallinn",
    "Valencia", "Kyoto", "Austin", "Glasgow", "Lagos", "Santiago",
]
HELDOUT_CITIES = ["Vienna", "Madrid", "Seoul", "Toronto", "Athens", "Prague", "Mumbai", "Helsinki", "Nantes",
                  "Adelaide", "Rabat", "Geneva", "Cusco", "Busan", "Bristol"]
SKIES = ["sunny", "cloudy", "rainy", "snowy", "windy", "foggy"]
TRAIN_PATTERNS = [
    "{city}: {sky}, {temp} degrees.",
    "It is {sky} in {city} today, {temp}°C.",
    "{temp} degrees and {sky} in {city}.",
    "Weather in {city}: {temp}°C and {sky}.",
    "Expect a {sky} day in {city}, around {temp} degrees.",
]
HELDOUT_PATTERNS = [
    "In {city} it is {sky} with {temp} degrees.",
    "{city} today: {sky} and {temp}°C.",
]


def answer(city: str, sky: str, temp: int) -> str:
    return json.dumps({"city": city, "sky": sky, "temp_c": temp}, ensure_ascii=False)


def rows(cities: list[str], patterns: list[str], n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    out, seen = [], set()
    while len(out) < n:
        city, sky, temp, pattern = rng.choice(cities), rng.choice(SKIES), rng.randint(-12, 38), rng.choice(patterns)
        sentence = pattern.format(city=city, sky=sky, temp=temp)
        if sentence not in seen:
            seen.add(sentence)
            out.append({"sentence": sentence, "answer": answer(city, sky, temp)})
    return out


def main() -> None:
    here = Path(__file__).parent
    train = rows(TRAIN_CITIES, TRAIN_PATTERNS, 240, seed=7)
    heldout = rows(HELDOUT_CITIES, HELDOUT_PATTERNS, 40, seed=11)
    assert not {r["sentence"] for r in train} & {r["sentence"] for r in heldout}
    for name, data in (("train", train), ("heldout", heldout)):
        with (here / f"{name}.jsonl").open("w", encoding="utf-8") as f:
            for row in data:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        print(f"{name}: {len(data)} rows")


if __name__ == "__main__":
    main()
