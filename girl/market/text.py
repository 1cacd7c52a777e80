"""Words of the synthetic job market, in Chinese and English: how CVs and JDs are written, and how a JD
is read back into attributes (the oracle's parser).

Everything here is invented for the synthetic market (girl/market/); no real data is used.
"""

import random
import re

LANGS = ("zh", "en")

# field key -> (zh name, en name), job titles (zh, en), skills (zh, en), duties (zh, en)
FIELDS = {
    "software": dict(
        titles=[("后端开发工程师", "Backend Engineer"), ("Java开发工程师", "Java Developer"),
                ("软件测试工程师", "QA Engineer")],
        skills=[("Java", "Java"), ("Spring", "Spring"), ("MySQL", "MySQL"), ("Redis", "Redis"),
                ("Linux", "Linux"), ("Docker", "Docker"), ("Kafka", "Kafka"), ("Go语言", "Golang"),
                ("微服务", "microservices"), ("自动化测试", "test automation")],
        duties=[("负责核心业务系统的设计与开发", "build and maintain core business systems"),
                ("参与代码评审，保障系统稳定", "review code and keep services reliable")]),
    "data": dict(
        titles=[("数据分析师", "Data Analyst"), ("算法工程师", "Machine Learning Engineer"),
                ("数据工程师", "Data Engineer")],
        skills=[("Python", "Python"), ("SQL", "SQL"), ("Spark", "Spark"), ("Hive", "Hive"),
                ("Tableau", "Tableau"), ("机器学习", "machine learning"), ("深度学习", "deep learning"),
                ("PyTorch", "PyTorch"), ("统计分析", "statistics"), ("数据可视化", "data visualization")],
        duties=[("分析业务数据，输出分析报告", "analyse business data and write reports"),
                ("搭建数据模型，支持业务决策", "build data models that support decisions")]),
    "finance": dict(
        titles=[("会计", "Accountant"), ("财务分析师", "Financial Analyst"), ("审计专员", "Auditor")],
        skills=[("财务报表", "financial reporting"), ("成本核算", "cost accounting"), ("税务", "taxation"),
                ("审计", "auditing"), ("用友", "Yonyou ERP"), ("SAP", "SAP"), ("Excel", "Excel"),
                ("预算管理", "budgeting"), ("财务分析", "financial analysis"), ("CPA", "CPA")],
        duties=[("负责日常账务处理与报表编制", "handle daily bookkeeping and reporting"),
                ("配合完成内外部检查工作", "support internal and external audits")]),
    "marketing": dict(
        titles=[("市场专员", "Marketing Specialist"), ("新媒体运营", "Social Media Manager"),
                ("品牌经理", "Brand Manager")],
        skills=[("新媒体运营", "social media"), ("内容策划", "content planning"), ("SEO", "SEO"),
                ("活动策划", "event planning"), ("品牌推广", "brand promotion"), ("文案写作", "copywriting"),
                ("短视频", "short video"), ("市场调研", "market research"), ("用户增长", "user growth"),
                ("广告投放", "paid advertising")],
        duties=[("策划并执行市场推广活动", "plan and run marketing campaigns"),
                ("提升品牌影响力与用户规模", "grow brand awareness and the user base")]),
    "sales": dict(
        titles=[("销售代表", "Sales Representative"), ("客户经理", "Account Manager"),
                ("大客户销售", "Key Account Sales")],
        skills=[("客户开发", "business development"), ("谈判", "negotiation"), ("CRM", "CRM"),
                ("渠道管理", "channel management"), ("商务英语", "business English"), ("招投标", "bidding"),
                ("销售管理", "sales management"), ("电话销售", "telesales"), ("客户维护", "account management"),
                ("市场开拓", "market expansion")],
        duties=[("开发新客户并完成销售目标", "win new clients and meet sales targets"),
                ("维护客户关系，促成长期合作", "keep client relationships strong")]),
    "nursing": dict(
        titles=[("护士", "Registered Nurse"), ("护理主管", "Nursing Supervisor"), ("康复治疗师", "Physiotherapist")],
        skills=[("护士执业证", "nursing license"), ("静脉输液", "IV therapy"), ("急救", "first aid"),
                ("病房护理", "ward care"), ("康复训练", "rehabilitation"), ("护理文书", "care documentation"),
                ("ICU护理", "intensive care"), ("儿科护理", "pediatric care"), ("感染控制", "infection control"),
                ("健康宣教", "health education")],
        duties=[("负责病区患者的日常护理", "care for patients on the ward"),
                ("执行医嘱，记录护理信息", "carry out treatment plans and keep records")]),
    "mechanical": dict(
        titles=[("机械工程师", "Mechanical Engineer"), ("工艺工程师", "Process Engineer"),
                ("设备工程师", "Equipment Engineer")],
        skills=[("AutoCAD", "AutoCAD"), ("SolidWorks", "SolidWorks"), ("机械设计", "mechanical design"),
                ("PLC", "PLC"), ("模具设计", "mould design"), ("有限元分析", "finite element analysis"),
                ("公差分析", "tolerance analysis"), ("精益生产", "lean manufacturing"), ("数控加工", "CNC machining"),
                ("设备维护", "equipment maintenance")],
        duties=[("负责产品结构设计与改进", "design and improve product structures"),
                ("解决生产现场技术问题", "solve technical problems on the shop floor")]),
    "education": dict(
        titles=[("英语教师", "English Teacher"), ("数学教师", "Math Teacher"), ("课程顾问", "Course Advisor")],
        skills=[("教师资格证", "teaching certificate"), ("课程设计", "curriculum design"), ("班级管理", "classroom management"),
                ("英语教学", "English teaching"), ("数学教学", "math teaching"), ("家校沟通", "parent communication"),
                ("在线教学", "online teaching"), ("教研", "teaching research"), ("演讲", "public speaking"),
                ("学情分析", "learning assessment")],
        duties=[("负责课程讲授与学生辅导", "teach classes and tutor students"),
                ("参与教学研讨，提升教学质量", "improve teaching quality with the team")]),
}
CITIES = [("北京", "Beijing"), ("上海", "Shanghai"), ("广州", "Guangzhou"), ("深圳", "Shenzhen"),
          ("杭州", "Hangzhou"), ("成都", "Chengdu"), ("武汉", "Wuhan"), ("南京", "Nanjing")]
EDUCATION = [("大专", "associate degree"), ("本科", "bachelor's degree"), ("硕士", "master's degree"),
             ("博士", "PhD")]
SURNAMES = ("王李张刘陈杨黄赵吴周徐孙马朱胡郭何林罗高")
GIVEN = ("伟芳娜敏静丽强磊军洋勇艳杰涛明超秀霞平刚桂英华")
FIRST_EN = ["Alex", "Sam", "Jordan", "Taylor", "Morgan", "Casey", "Riley", "Jamie", "Avery", "Quinn", "Drew", "Robin"]
LAST_EN = ["Chen", "Smith", "Wang", "Garcia", "Li", "Brown", "Zhang", "Miller", "Liu", "Davis", "Lopez", "Wilson"]
COMPANY_A = [("星辰", "Star"), ("远航", "Voyage"), ("启明", "Dawn"), ("云帆", "Cloudsail"), ("华新", "Huaxin"),
             ("博远", "Boyuan"), ("蓝海", "Blue Ocean"), ("同创", "Tongchuang")]
COMPANY_B = [("科技", "Technologies"), ("集团", "Group"), ("教育", "Learning"), ("医疗", "Health"),
             ("制造", "Manufacturing"), ("咨询", "Consulting")]
SENIORITY = {"zh": ["初级", "", "高级"], "en": ["Junior ", "", "Senior "]}


# The gap market (python -m girl.market --gap): a CV never names a skill the way a JD does. It names the
# in-house tools and projects the person worked with, each standing for one skill; relating them to the JD's
# requirements is a mapping to be learned (from the SFT corpus, by G). Three made-up tool names per skill,
# drawn once from a fixed seed of their own, so that the market's random draws are untouched.
def _tool_names(per_skill: int = 3) -> dict:
    rng = random.Random("girl-gap-tools")
    onsets, vowels, codas = "bdfgklmnprstvz", "aeiou", ["", "n", "r", "x", "l"]
    names, seen = {}, set()
    for field in FIELDS:
        for k in range(len(FIELDS[field]["skills"])):
            names[field, k] = []
            while len(names[field, k]) < per_skill:
                name = "".join(rng.choice(onsets) + rng.choice(vowels) for _ in range(rng.randint(2, 3))) + rng.choice(codas)
                if name not in seen:
                    seen.add(name)
                    names[field, k].append(name.capitalize())
    return names


TOOLS = _tool_names()
DID = {"zh": ["使用{}开发项目", "负责{}的日常维护", "用{}完成了多个项目", "基于{}搭建内部系统", "参与{}相关工作"],
       "en": ["built projects with {}", "ran {} day to day", "delivered several projects on {}",
              "set up internal systems on {}", "worked on {}"]}


def _i(lang):
    return LANGS.index(lang)


def field_title(field, k, lang):
    return FIELDS[field]["titles"][k][_i(lang)]


def skill_name(field, k, lang):
    return FIELDS[field]["skills"][k][_i(lang)]


# ----------------------------------------------------------------------------- rendering

def render_cv(s, lang: str, rng: random.Random, gap: bool = False) -> str:
    """A CV for seeker s, phrased, ordered and trimmed at random so that no two look alike. With gap, the
    skills line says what the person did with which tools (TOOLS) instead of naming the skills."""
    zh = lang == "zh"
    L = _i(lang)
    skills = ([rng.choice(DID[lang]).format(rng.choice(TOOLS[f, k])) for f, k in s.skills] if gap
              else [FIELDS[f]["skills"][k][L] for f, k in s.skills])
    sep = "、" if zh else ", "
    if zh:
        name = rng.choice(SURNAMES) + rng.choice(GIVEN) + (rng.choice(GIVEN) if rng.random() < 0.5 else "")
        parts = {
            "name": f"{rng.choice(['姓名', '名字'])}：{name}",
            "city": f"{rng.choice(['期望城市', '意向城市', '期望工作地点'])}：{CITIES[s.city][0]}",
            "salary": f"{rng.choice(['期望薪资', '期望月薪'])}：{s.salary:g}K/月",
            "years": f"{rng.choice(['工作经验', '工作年限'])}：{s.years}年" if s.years else "工作经验：应届毕业生",
            "edu": f"{rng.choice(['学历', '最高学历'])}：{EDUCATION[s.edu][0]}",
            "skills": (f"{rng.choice(['项目经历', '工作经历'])}：{'；'.join(skills)}" if gap
                       else f"{rng.choice(['技能', '专业技能', '掌握技能'])}：{sep.join(skills)}"),
        }
        if s.intent is not None:
            parts["intent"] = f"{rng.choice(['求职意向', '意向岗位', '应聘职位'])}：{field_title(s.field, s.intent, 'zh')}"
        if rng.random() < 0.4:
            parts["self"] = "自我评价：" + rng.choice(["认真负责，善于沟通。", "学习能力强，有团队精神。",
                                                    "抗压能力强，执行力好。", "性格开朗，做事踏实。"])
    else:
        name = f"{rng.choice(FIRST_EN)} {rng.choice(LAST_EN)}"
        parts = {
            "name": f"Name: {name}",
            "city": f"{rng.choice(['Preferred city', 'Location', 'Wants to work in'])}: {CITIES[s.city][1]}",
            "salary": f"{rng.choice(['Expected salary', 'Salary expectation'])}: {s.salary:g}K per month",
            "years": (f"{rng.choice(['Experience', 'Work experience'])}: {s.years} years" if s.years
                      else "Experience: new graduate"),
            "edu": f"{rng.choice(['Education', 'Highest degree'])}: {EDUCATION[s.edu][1]}",
            "skills": (f"{rng.choice(['Projects', 'Work history'])}: {'; '.join(skills)}" if gap
                       else f"{rng.choice(['Skills', 'Key skills', 'Expertise'])}: {sep.join(skills)}"),
        }
        if s.intent is not None:
            parts["intent"] = f"{rng.choice(['Objective', 'Target role', 'Applying for'])}: {field_title(s.field, s.intent, 'en')}"
        if rng.random() < 0.4:
            parts["self"] = "About me: " + rng.choice(["reliable and a clear communicator.", "a fast learner and team player.",
                                                       "calm under pressure.", "curious and hands-on."])
    head = [k for k in ("name", "intent") if k in parts]
    body = [k for k in parts if k not in head]
    rng.shuffle(body)
    return "\n".join(parts[k] for k in head + body)


def render_jd(j, lang: str, rng: random.Random) -> str:
    """A job description for job j, with varied keys, formats and order."""
    zh = lang == "zh"
    L = _i(lang)
    title = SENIORITY[lang][j.level] + field_title(j.field, j.title, lang)
    company = COMPANY_A[j.company[0]][L] + ("" if zh else " ") + COMPANY_B[j.company[1]][L]
    skills = [skill_name(j.field, k, lang) for k in j.skills]
    rng.shuffle(skills)
    duty = FIELDS[j.field]["duties"][rng.randrange(2)][L]
    if zh:
        salary = rng.choice([f"{j.salary[0]:g}-{j.salary[1]:g}K/月", f"{j.salary[0]:g}K-{j.salary[1]:g}K",
                             f"{j.salary[0] / 10:g}-{j.salary[1] / 10:g}万/月"])
        exp = f"{j.min_exp}年以上相关工作经验" if j.min_exp else rng.choice(["经验不限", "接受应届毕业生"])
        edu = f"{EDUCATION[j.edu][0]}及以上学历"
        skill_line = rng.choice(["熟悉", "熟练掌握", "具备"]) + "、".join(skills)
        reqs = [edu, exp, skill_line]
        rng.shuffle(reqs)
        lines = [f"{rng.choice(['职位', '岗位', '招聘职位'])}：{title}", f"公司：{company}",
                 f"{rng.choice(['工作地点', '工作城市', '地点'])}：{CITIES[j.city][0]}",
                 f"{rng.choice(['薪资', '薪酬', '月薪'])}：{salary}",
                 f"{rng.choice(['岗位职责', '工作内容'])}：{duty}。",
                 rng.choice(["任职要求：", "岗位要求："])] + [f"{i + 1}. {r}" for i, r in enumerate(reqs)]
    else:
        salary = rng.choice([f"{j.salary[0]:g}K-{j.salary[1]:g}K per month", f"{j.salary[0]:g}-{j.salary[1]:g}K/month"])
        exp = f"{j.min_exp}+ years of experience" if j.min_exp else rng.choice(["no experience required", "new graduates welcome"])
        edu = f"{EDUCATION[j.edu][1]} or above"
        skill_line = rng.choice(["familiar with ", "strong skills in ", "experience with "]) + ", ".join(skills)
        reqs = [edu, exp, skill_line]
        rng.shuffle(reqs)
        lines = [f"{rng.choice(['Position', 'Job title', 'Role'])}: {title}", f"Company: {company}",
                 f"{rng.choice(['Location', 'City'])}: {CITIES[j.city][1]}",
                 f"{rng.choice(['Salary', 'Pay'])}: {salary}",
                 f"{rng.choice(['Responsibilities', 'What you will do'])}: {duty}.",
                 rng.choice(["Requirements:", "What we need:"])] + [f"- {r}" for r in reqs]
    head, rest = lines[:1], lines[1:5]
    rng.shuffle(rest)  # company, location, salary and duties in any order; title first, requirements last
    return "\n".join(head + rest + lines[5:])


# ----------------------------------------------------------------------------- parsing (the oracle's reader)

def _alternatives(strings):
    return "|".join(re.escape(s) for s in sorted(strings, key=len, reverse=True))


def _tables(lang):
    L = _i(lang)
    titles = {FIELDS[f]["titles"][k][L]: (f, k) for f in FIELDS for k in range(len(FIELDS[f]["titles"]))}
    skills = {FIELDS[f]["skills"][k][L]: (f, k) for f in FIELDS for k in range(len(FIELDS[f]["skills"]))}
    return titles, skills


_TABLES = {lang: _tables(lang) for lang in LANGS}
NUM = r"(\d+(?:\.\d+)?)"
_SALARY = {
    "zh": [(re.compile(NUM + r"\s*K?\s*[-~至到]\s*" + NUM + r"\s*K", re.I), 1.0),
           (re.compile(NUM + r"\s*万?\s*[-~至到]\s*" + NUM + r"\s*万"), 10.0)],
    "en": [(re.compile(NUM + r"\s*K?\s*(?:-|to)\s*" + NUM + r"\s*K", re.I), 1.0)],
}


def parse_jd(text: str, lang: str):
    """Read a JD back into attributes: dict(field, title, skills, min_exp, edu, city, salary) or None.

    None means unparseable: no known title, city, salary range, experience or education requirement, or
    no known skill. A salary range whose top exceeds 2.5x its bottom is not a real offer and is refused,
    so a generator cannot match every seeker by promising every salary.
    """
    titles, skills = _TABLES[lang]
    L = _i(lang)
    # titles and skills scanned together, longest first: "护士" inside the skill "护士执业证" is no title
    m = next((m for m in re.finditer(_alternatives(list(titles) + list(skills)), text) if m.group(0) in titles), None)
    if m is None:
        return None
    field, title = titles[m.group(0)]
    cities = [c[L] for c in CITIES]
    city = re.search(_alternatives(cities), text)
    salary = None
    for pattern, scale in _SALARY[lang]:
        if s := pattern.search(text):
            salary = (round(float(s.group(1)) * scale, 2), round(float(s.group(2)) * scale, 2))
            break
    if city is None or salary is None or not 0 < salary[0] < salary[1] <= 2.5 * salary[0]:
        return None
    if lang == "zh":
        exp = re.search(r"(\d+)\s*年以上", text)
        min_exp = int(exp.group(1)) if exp else (0 if re.search("经验不限|应届", text) else None)
        edu = re.search(r"(" + _alternatives([e[0] for e in EDUCATION]) + r")及以上", text)
    else:
        exp = re.search(r"(\d+)\+? years", text)
        min_exp = int(exp.group(1)) if exp else (0 if re.search("no experience required|new graduates", text, re.I) else None)
        edu = re.search(r"(" + _alternatives([e[1] for e in EDUCATION]) + r") or above", text, re.I)
    if min_exp is None or edu is None:
        return None
    edu_level = [e[L].lower() for e in EDUCATION].index(edu.group(1).lower())
    found = set()
    rest = text[: m.start()] + "\n" + text[m.end() :]  # titles may contain skill names ("护士" / "护士执业证")
    for name in sorted(skills, key=len, reverse=True):  # longest first: "Go语言" before "Go"
        pattern = re.escape(name) if not name.isascii() else r"(?<![A-Za-z])" + re.escape(name) + r"(?![A-Za-z])"
        if re.search(pattern, rest, flags=0 if lang == "zh" else re.I):
            found.add(skills[name])
            rest = re.sub(pattern, " ", rest, flags=0 if lang == "zh" else re.I)
    if not found:
        return None
    return dict(field=field, title=title, skills=found, min_exp=min_exp, edu=edu_level,
                city=cities.index(city.group(0)), salary=salary)
