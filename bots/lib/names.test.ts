import { describe, expect, test } from 'vitest';
import { nameKeys, namesAgree, normalizeName, transliterateGreek } from './names.ts';

describe('normalizeName', () => {
  test.each([
    ['Γεώργιος', 'ΓΕΩΡΓΙΟΣ'],
    ['Ανδρέας', 'ΑΝΔΡΕΑΣ'],
    // dialytika and dialytika-with-tonos
    ['Προϊόν', 'ΠΡΟΙΟΝ'],
    ['Ευφροσύνη Μαΐστρου', 'ΕΥΦΡΟΣΥΝΗ ΜΑΙΣΤΡΟΥ'],
    ['ΐ ΰ', 'Ι Υ'],
    // final sigma, lower and upper in one string
    ['Νίκος Σάββας', 'ΝΙΚΟΣ ΣΑΒΒΑΣ'],
    ['  Μαρία \t  Κωνσταντίνου  ', 'ΜΑΡΙΑ ΚΩΝΣΤΑΝΤΙΝΟΥ'],
    ['José Müller', 'JOSE MULLER'],
    ['', ''],
    ['   ', ''],
  ])('%j → %j', (input, expected) => {
    expect(normalizeName(input)).toBe(expected);
  });

  test('no lowercase final sigma survives', () => {
    expect(normalizeName('ςσΣ')).toBe('ΣΣΣ');
  });
});

describe('transliterateGreek (ELOT 743)', () => {
  test.each([
    ['ΓΕΩΡΓΙΟΥ', 'GEORGIOU'],
    ['Ανδρέας', 'ANDREAS'],
    ['Παπαδόπουλος', 'PAPADOPOULOS'],
    ['Χριστοδούλου', 'CHRISTODOULOU'],
    ['Ψαράς', 'PSARAS'],
    ['Ξενοφώντος', 'XENOFONTOS'],
    ['Θεοφάνους', 'THEOFANOUS'],
    ['Ηλίας', 'ILIAS'],
    ['Ωρίων', 'ORION'],
    ['Βασίλης', 'VASILIS'],
    ['Φωτεινή', 'FOTEINI'],
    ['Κυριάκος', 'KYRIAKOS'],
    // digraphs at the start of a word, and inside it
    ['Μπακογιάννης', 'BAKOGIANNIS'],
    ['Χαράλαμπος', 'CHARALAMPOS'],
    ['Ντίνος', 'DINOS'],
    ['Κωνσταντίνος', 'KONSTANTINOS'],
    ['Γκίκας', 'GIKAS'],
    ['Αγκάθι', 'ANGATHI'],
    ['Αγγελική', 'ANGELIKI'],
    ['Σφίγξ', 'SFINX'],
    ['Μελαγχολία', 'MELANCHOLIA'],
    // ΑΥ/ΕΥ/ΗΥ: V before vowels and voiced consonants, F before voiceless ones and at the end
    ['Ευάγγελος', 'EVANGELOS'],
    ['Αύρα', 'AVRA'],
    ['Ευθυμίου', 'EFTHYMIOU'],
    ['Ευστάθιος', 'EFSTATHIOS'],
    ['Αυτός', 'AFTOS'],
    ['Ηύρα', 'IVRA'],
    ['Ταυ', 'TAF'],
    // dialytika breaks the digraph
    ['Προϋπολογισμός', 'PROYPOLOGISMOS'],
    ['Ευφροσύνη Μαΐστρου', 'EFFROSYNI MAISTROU'],
    ['Πειραιεύς', 'PEIRAIEFS'],
    // doubled letters stay doubled
    ['Σάββας', 'SAVVAS'],
    ['Ματθαίος', 'MATTHAIOS'],
  ])('%s → %s', (input, expected) => {
    expect(transliterateGreek(input)).toBe(expected);
  });

  test('Latin passes through (uppercased, accents dropped)', () => {
    expect(transliterateGreek('Georgiou Andreas')).toBe('GEORGIOU ANDREAS');
    expect(transliterateGreek("O'Brien-Smith")).toBe("O'BRIEN-SMITH");
  });

  test('mixed scripts: each word keeps its own script, Latin look-alikes inside Greek words are Greek', () => {
    expect(transliterateGreek('ΓΕΩΡΓΙΟΥ Andreas')).toBe('GEORGIOU ANDREAS');
    // Latin E, P, I, O, Y typed inside a Greek word
    expect(transliterateGreek('ΓEΩPΓIOY')).toBe('GEORGIOU');
    // Latin H inside a Greek word is Eta (I), not the Latin letter
    expect(transliterateGreek('ΗΛΙAΣ')).toBe('ILIAS');
  });

  test('already normalised input gives the same result as raw input', () => {
    for (const s of ['Γεώργιος Χαραλάμπους', 'Ευάγγελος', 'Ντίνα Μπαλτά']) {
      expect(transliterateGreek(normalizeName(s))).toBe(transliterateGreek(s));
    }
  });

  test('empty and punctuation-only input', () => {
    expect(transliterateGreek('')).toBe('');
    expect(transliterateGreek('   ')).toBe('');
    expect(transliterateGreek('-')).toBe('-');
  });

  test('digits and unknown scripts are kept', () => {
    expect(transliterateGreek('Ανδρέας 2ος')).toBe('ANDREAS 2OS');
    expect(transliterateGreek('Иван')).toBe('ИВАН');
  });
});

describe('nameKeys', () => {
  test('Greek and its passport spelling share a key', () => {
    const greek = nameKeys({ family: 'ΓΕΩΡΓΙΟΥ', given: ['ΑΝΔΡΕΑΣ'] });
    const latin = nameKeys({ family: 'GEORGIOU', given: ['ANDREAS'] });
    expect(greek).toContain('GEORGIOU|ANDREAS');
    expect(latin).toEqual(['GEORGIOU|ANDREAS']);
  });

  test('common Cypriot spellings are variants: Χ→H, ΜΠ→MB, Γ→Y', () => {
    const keys = nameKeys({ family: 'Χαραλάμπους', given: ['Γιώργος'] });
    expect(keys[0]).toBe('CHARALAMPOUS|GIORGOS');
    expect(keys).toContain('HARALAMBOUS|YIORGOS');
    expect(keys).toContain('CHARALAMBOUS|GIORGOS');
    expect(keys).not.toContain('HARALAMBOUS|GEORGIOS');
  });

  test('only the first given name counts; spaces and hyphens in the family are ignored', () => {
    expect(nameKeys({ family: 'Papadopoulou-Georgiou', given: ['Maria Eleni', 'Anna'] })).toEqual(['PAPADOPOULOUGEORGIOU|MARIA']);
    expect(nameKeys({ family: 'Van Der Berg', given: ['  ', 'Jan'] })).toEqual(['VANDERBERG|JAN']);
  });

  test('no family, no keys; no given, an empty given part', () => {
    expect(nameKeys({ given: ['ANDREAS'] })).toEqual([]);
    expect(nameKeys({ family: '  ', given: ['ANDREAS'] })).toEqual([]);
    expect(nameKeys({})).toEqual([]);
    expect(nameKeys({ family: 'GEORGIOU' })).toEqual(['GEORGIOU|']);
  });

  test('variants stay bounded for a long multi-word Greek name', () => {
    const keys = nameKeys({ family: 'Χατζηχαραλάμπους Μπαμπαγιάννη Ντεγκιάγγελου', given: ['Ευγενία Χρυσάνθη'] });
    expect(keys.length).toBeGreaterThan(1);
    expect(keys.length).toBeLessThanOrEqual(4 * 32 * 32);
    expect(new Set(keys).size).toBe(keys.length);
  });
});

describe('namesAgree', () => {
  test('Greek PID name vs Latin registry name', () => {
    expect(namesAgree([{ family: 'ΓΕΩΡΓΙΟΥ', given: ['ΑΝΔΡΕΑΣ'] }], [{ family: 'Georgiou', given: ['Andreas'] }])).toBe(true);
    expect(namesAgree([{ family: 'Χριστοδούλου', given: ['Χαράλαμπος'] }], [{ family: 'HRISTODOULOU', given: ['HARALAMBOS'] }])).toBe(true);
  });

  test('any of several names may agree (repeating PID-5 with both scripts)', () => {
    const pid = [
      { family: 'ΓΕΩΡΓΙΟΥ', given: ['ΑΝΔΡΕΑΣ'] },
      { family: 'GEORGIOU', given: ['ANDREAS'] },
    ];
    expect(namesAgree(pid, [{ family: 'Γεωργίου', given: ['Ανδρέας'] }])).toBe(true);
  });

  test('different people do not agree', () => {
    expect(namesAgree([{ family: 'ΓΕΩΡΓΙΟΥ', given: ['ΑΝΔΡΕΑΣ'] }], [{ family: 'GEORGIOU', given: ['ANNA'] }])).toBe(false);
    expect(namesAgree([{ family: 'ΓΕΩΡΓΙΟΥ', given: ['ΑΝΔΡΕΑΣ'] }], [{ family: 'GEORGIADIS', given: ['ANDREAS'] }])).toBe(false);
    // a missing given name on one side is not agreement
    expect(namesAgree([{ family: 'GEORGIOU' }], [{ family: 'GEORGIOU', given: ['ANDREAS'] }])).toBe(false);
  });

  test('empty lists never agree', () => {
    expect(namesAgree([], [])).toBe(false);
    expect(namesAgree([{ family: 'A', given: ['B'] }], [])).toBe(false);
    expect(namesAgree([], [{ family: 'A', given: ['B'] }])).toBe(false);
    expect(namesAgree([{}], [{}])).toBe(false);
  });
});
