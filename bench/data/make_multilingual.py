"""Writes bench/data/multilingual.jsonl: news-like paragraphs in seven languages with typographic
quotes, dashes and euro amounts (written for this benchmark), each line one language's sentences in
a different order, so that bench/bench_tokenize.py --texts-jsonl finds 64 distinct texts of 40 and of
300 tokens. Deterministic: rerunning it rewrites the same file.

    .venv/bin/python bench/data/make_multilingual.py
"""
from __future__ import annotations

import json
import random
from pathlib import Path

SENTENCES = {
    "de": ["Die Börse in Frankfurt schloss am Montag mit einem Plus von 1,2 Prozent.",
           "„Die Nachfrage überrascht uns“, sagte ein Händler – die Exporte stiegen deutlich.",
           "Der Euro kostete zuletzt 1,08 US-Dollar; Anleihen gaben leicht nach.",
           "Für das dritte Quartal erwartet der Konzern einen Gewinn von 2,4 Mrd. €.",
           "Gewerkschaften kündigten für Donnerstag Warnstreiks in mehreren Städten an.",
           "Die Regierung will das Gesetz noch vor der Sommerpause verabschieden."],
    "fr": ["La Bourse de Paris a terminé la séance en légère hausse, à 7 412 points.",
           "« Nous restons prudents », a déclaré le ministre de l’Économie — sans donner de chiffres.",
           "Le prix du gazole a reculé de 3 centimes en une semaine, à 1,74 € le litre.",
           "L’équipe de France s’est qualifiée pour la finale après une victoire 2-1.",
           "Les négociations reprendront jeudi à Bruxelles, selon une source diplomatique.",
           "Le festival a accueilli plus de 120 000 spectateurs cette année."],
    "pl": ["Giełda w Warszawie zakończyła dzień wzrostem o 0,8 proc.",
           "„Popyt jest wciąż silny” – powiedział analityk jednego z banków.",
           "Złoty umocnił się wobec euro; za jedno euro płacono 4,32 zł.",
           "Rząd przyjął projekt ustawy o zmianach w podatku dochodowym.",
           "Reprezentacja Polski wygrała mecz towarzyski po golu w ostatniej minucie.",
           "Ceny mieszkań w dużych miastach wzrosły w ciągu roku o 12 proc."],
    "ru": ["Московская биржа завершила торги ростом индекса на 1,5%.",
           "«Мы ожидаем дальнейшего роста спроса», — заявил представитель компании.",
           "Курс евро на бирже составил 98 рублей; нефть подорожала на 2%.",
           "Правительство одобрило проект бюджета на следующий год.",
           "Сборная России по хоккею выиграла турнир, обыграв соперников в финале.",
           "В столице открылась выставка современного искусства."],
    "el": ["Το Χρηματιστήριο Αθηνών έκλεισε με άνοδο 0,9% τη Δευτέρα.",
           "«Η ζήτηση παραμένει ισχυρή», δήλωσε αναλυτής — χωρίς να δώσει λεπτομέρειες.",
           "Η κυβέρνηση ανακοίνωσε νέα μέτρα στήριξης ύψους 500 εκατ. €.",
           "Η εθνική ομάδα κέρδισε τον αγώνα με 2-0 στο γήπεδο της Αθήνας.",
           "Οι τιμές των ενοικίων αυξήθηκαν κατά 8% μέσα σε έναν χρόνο.",
           "Το φεστιβάλ θα διαρκέσει μέχρι το τέλος του μήνα."],
    "es": ["La Bolsa de Madrid cerró la sesión con una subida del 1,1 %.",
           "«La demanda sigue siendo fuerte», afirmó un portavoz — sin dar más detalles.",
           "El precio de la luz bajó un 4 % y el mercado espera nuevas rebajas.",
           "El Gobierno aprobó un plan de inversión de 3.000 millones de €.",
           "El equipo ganó la final por 3-1 ante más de 60.000 aficionados.",
           "Las exportaciones españolas crecieron un 6 % en el último trimestre."],
    "cs": ["Pražská burza uzavřela obchodování růstem o 0,7 %.",
           "„Poptávka je stále silná“, řekl analytik – podrobnosti ale neuvedl.",
           "Koruna posílila vůči euru; za jedno euro se platilo 24,9 Kč.",
           "Vláda schválila návrh zákona o změnách daně z příjmu.",
           "Čeští hokejisté vyhráli turnaj po vítězství ve finále.",
           "Ceny bytů ve velkých městech vzrostly za rok o 9 %."],
}
LINES_PER_LANGUAGE = 12
SENTENCES_PER_LINE = 48


OUTPUT = Path(__file__).with_name("multilingual.jsonl")


def jsonl() -> str:
    """The file's content: the same on every run (seeded)."""
    rng = random.Random(0)
    lines = []
    for language, sentences in SENTENCES.items():
        for _ in range(LINES_PER_LANGUAGE):
            text = " ".join(rng.choice(sentences) for _ in range(SENTENCES_PER_LINE))
            lines.append(json.dumps({"language": language, "text": text}, ensure_ascii=False))
    return "\n".join(lines) + "\n"


def main() -> None:
    OUTPUT.write_text(jsonl(), encoding="utf-8")
    print(f"wrote {OUTPUT}")


if __name__ == "__main__":
    main()
