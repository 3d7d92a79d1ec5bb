"""The text generated posters draw (``edsr_jax.data.posters``): Latin words and Chinese terms
and sentences, each split into a ``train`` and a disjoint ``heldout`` list.

Latin posters draw random runs of ``WORDS`` (train: even positions, held-out: odd positions).
Chinese posters draw terms (titles, labels, table cells, captions: runs of short noun phrases)
and whole sentences (paragraphs): plain modern Chinese about design, transport, science, music,
city events, libraries, health and sport. No term or sentence is in both lists, so a held-out
Chinese poster never repeats a training line (single characters are of course shared).
"""

from __future__ import annotations

from typing import NamedTuple

WORDS = tuple(dict.fromkeys("""
annual summit design motion energy river forum future light market garden school studio
vision harbor signal public transit museum archive science ocean theatre festival concert
gallery digital network program review station season capital winter summer autumn spring
north south central urban coastal modern classic open access series lecture workshop
exhibit research project report quarter growth budget member council service health water
climate field survey sample result method model figure table chart value index total
average change region sector product launch update notice event ticket entry hall room
floor level route bridge tower square street avenue district village county nation world
global local history culture nature travel sport music dance film photo print paper poster
letter number record system engine circuit metal timber stone glass cotton silver golden
bright quiet rapid steady simple active direct formal urgent daily weekly monthly yearly
""".split()))  # unique words, in order

CJK_TERMS_TRAIN = tuple("""
年度设计论坛 公共交通 城市更新 科学普及 音乐节 研究成果 展览开幕 设计周 地铁线路 公交站台
自行车道 步行街区 滨江公园 社区中心 图书馆 美术馆 博物馆 科技馆 青年论坛 创新大赛
学术报告 专题讲座 工作坊 开放日 志愿者 报名方式 活动安排 主办单位 协办单位 参展单位
交通规划 绿色出行 新能源汽车 充电设施 智能交通 数据分析 人工智能 材料科学 天文观测 海洋研究
气候变化 节能减排 垃圾分类 水资源 城市规划 建筑设计 平面设计 字体设计 品牌形象 视觉传达
交响乐团 合唱比赛 民乐演出 爵士之夜 钢琴独奏 音乐教室 电影放映 摄影比赛 读书分享 夏季课程
市民服务 便民措施 运营时间 票价调整 换乘指南 首班车 末班车 站点名称 出口方向 安全须知
""".split())
CJK_TERMS_HELDOUT = tuple("""
国际艺术节 轨道交通 老城改造 科普讲堂 演唱会 实验报告 作品展示 创意市集 高铁站 有轨电车
共享单车 历史街区 湿地公园 文化广场 档案馆 少年宫 植物园 规划展览馆 学生论坛 编程比赛
年会报告 公开课 训练营 参观日 工作人员 咨询电话 日程表 承办单位 支持单位 合作伙伴
出行调查 低碳生活 电动公交 停车管理 信号系统 统计结果 机器学习 生命科学 地质考察 极地科考
空气质量 可再生能源 旧物回收 节约用水 街道设计 室内设计 海报设计 版式设计 标志设计 插画展
弦乐四重奏 童声合唱 戏曲专场 摇滚现场 小提琴演奏 乐器体验 纪录片展映 短片大赛 诗歌朗诵 冬令营
政务服务 惠民政策 开放时间 优惠方案 线路调整 候车须知 临时停靠 车站地图 无障碍通道 应急预案
""".split())
CJK_SENTENCES_TRAIN = (
    "本届设计论坛将于五月在市民中心举行，欢迎各界人士报名参加。",
    "新的地铁线路连接东西两个城区，全程约需四十分钟。",
    "为方便市民出行，部分公交线路将延长运营时间。",
    "展览共展出两百多件作品，涵盖平面设计、产品设计和建筑设计。",
    "科学普及周期间，各区图书馆将举办免费讲座。",
    "音乐节为期三天，来自全国的二十支乐队将登台演出。",
    "请乘客在黄线以外候车，先下后上，文明乘车。",
    "本次研究收集了三年的交通数据，分析了早晚高峰的变化。",
    "滨江公园的步行道已经全面开放，夜间设有照明。",
    "报名截止日期为本月二十日，名额有限，额满为止。",
    "活动现场提供饮用水和休息区，请注意保管个人物品。",
    "城市更新项目将改造老旧小区，增加绿地和停车位。",
    "青年设计师将分享他们在字体设计方面的经验。",
    "新能源汽车的充电设施将覆盖全市主要商业区。",
    "天文观测活动在郊外举行，请自备保暖衣物。",
    "合唱比赛分为成人组和少儿组，每组限报十个团队。",
    "本报告介绍了过去一年的主要成果和下一步工作计划。",
    "美术馆每周一闭馆，其他时间免费对公众开放。",
    "工作坊适合初学者参加，材料由主办方统一提供。",
    "自行车道的建设使短途出行更加安全便捷。",
    "数据显示，绿色出行的比例比去年提高了百分之十二。",
    "讲座结束后设有问答环节，欢迎现场提问。",
    "本次展览的主题是城市与自然的关系。",
    "请提前十五分钟到达会场，凭电子票入场。",
    "交响乐团将演奏多首经典作品，并首演一首新曲。",
    "社区中心每周六上午开设少儿美术课程。",
    "垃圾分类知识竞赛将在各街道同时举行。",
    "海洋研究所向公众开放实验室，介绍最新的研究设备。",
    "首班车发车时间为早上六点，末班车为晚上十一点。",
    "设计周期间，街头将布置三十件公共艺术装置。",
    "本课程共八节，每节课九十分钟，结业颁发证书。",
    "摄影比赛以城市生活为主题，作品须为原创。",
    "智能交通系统能够根据车流自动调整信号灯。",
    "读书分享会每月举办一次，本期主题是科学史。",
    "材料科学的新进展让建筑更加轻巧和节能。",
    "如遇恶劣天气，活动将顺延至下周同一时间。",
    "志愿者将在各出口为乘客提供引导服务。",
    "品牌形象的统一有助于提升公共服务的识别度。",
    "电影放映结束后，导演将与观众进行交流。",
    "票价调整方案已经过听证，将于下月起实施。",
    "人工智能论坛邀请了多位专家介绍行业应用。",
    "爵士之夜在老厂房改造的剧场里举行。",
    "换乘站内设有指示牌，请按照标识方向行走。",
    "本次调查共发放问卷五千份，回收率为百分之八十。",
    "水资源保护需要每一位市民的共同参与。",
)
CJK_SENTENCES_HELDOUT = (
    "国际艺术节将在十月开幕，演出和展览遍布全市各区。",
    "轨道交通三号线南段预计明年年底建成通车。",
    "老城改造保留了传统街巷的格局和历史建筑。",
    "科普讲堂每周三晚上开讲，现场座位先到先得。",
    "演唱会门票将在官方平台发售，每人限购两张。",
    "实验结果表明，新方法的能耗降低了近三成。",
    "创意市集汇集了一百多家手工艺摊位。",
    "高铁站与市中心之间开通了直达的接驳巴士。",
    "有轨电车沿湖岸行驶，沿途可以欣赏风景。",
    "共享单车请停放在指定区域，不要占用盲道。",
    "湿地公园是候鸟迁徙途中重要的停歇地。",
    "文化广场每晚七点有免费的露天演出。",
    "档案馆新开设了城市记忆数字展厅。",
    "植物园的温室里种植了三千多种热带植物。",
    "编程比赛面向中学生，以团队形式参赛。",
    "公开课的视频将在结束后一周内上线。",
    "训练营为期两周，学员需全程参加。",
    "如有疑问，请拨打咨询电话或发送电子邮件。",
    "出行调查显示，步行和骑行的距离正在增加。",
    "电动公交车已经占全市公交车总数的一半以上。",
    "新的停车管理办法鼓励错峰停车和共享车位。",
    "机器学习模型可以帮助预测客流的变化。",
    "生命科学展区用互动装置介绍细胞的结构。",
    "极地科考队员将讲述他们在南极的工作和生活。",
    "空气质量监测数据每小时更新一次。",
    "屋顶太阳能板为学校提供了四成的用电。",
    "旧物回收点设在各小区入口，每周二集中清运。",
    "街道设计应当优先考虑行人和儿童的安全。",
    "海报设计大赛的获奖作品将在地铁站内展出。",
    "版式设计课程讲解网格、字号和留白的运用。",
    "弦乐四重奏将在图书馆大厅举办午间音乐会。",
    "童声合唱团由来自十所小学的学生组成。",
    "戏曲专场演出前有讲解，帮助年轻观众入门。",
    "纪录片展映聚焦普通人的日常生活和工作。",
    "诗歌朗诵会欢迎市民带着自己的作品参加。",
    "冬令营安排了滑冰、手工和天文等多项活动。",
    "政务服务中心延长了周末的办理时间。",
    "线路调整期间，部分站点将临时停靠在路口对面。",
    "车站内设有无障碍通道和电梯，方便老人出行。",
    "应急预案规定了大客流时的疏导和限流措施。",
    "小提琴演奏会的曲目包括巴赫和莫扎特的作品。",
    "戴好头盔、遵守信号，是骑行安全的基本要求。",
    "插画展展出了二十位青年插画师的新作。",
    "开放时间为上午九点至下午五点，四点半停止入场。",
    "合作伙伴将为获奖团队提供实习和培训机会。",
)


class TextSource(NamedTuple):
    """What a poster draws from: ``words`` (runs of them make titles, labels, cells),
    ``sentences`` (paragraph lines; empty for Latin, which strings words into sentences) and
    ``sep`` (between words: a space for Latin, nothing for Chinese)."""

    words: tuple[str, ...]
    sentences: tuple[str, ...]
    sep: str


def word_list(words: str) -> tuple[str, ...]:
    """``"train"`` (even positions of ``WORDS``) or ``"heldout"`` (odd positions): disjoint."""
    if words == "train":
        return WORDS[0::2]
    if words == "heldout":
        return WORDS[1::2]
    raise ValueError(f"words must be 'train' or 'heldout', got {words!r}")


def text_source(words: str, cjk: bool) -> TextSource:
    """The Latin (``cjk=False``) or Chinese text of list ``words`` (``"train"``/``"heldout"``)."""
    if not cjk:
        return TextSource(word_list(words), (), " ")
    if words == "train":
        return TextSource(CJK_TERMS_TRAIN, CJK_SENTENCES_TRAIN, "")
    if words == "heldout":
        return TextSource(CJK_TERMS_HELDOUT, CJK_SENTENCES_HELDOUT, "")
    raise ValueError(f"words must be 'train' or 'heldout', got {words!r}")


def cjk_characters() -> str:
    """Every character the Chinese posters draw in their CJK face (both lists, and the digits
    and signs of figures, cells and dates; sorted, no spaces): a CJK font counts only when it
    has a glyph for each (``fonts.available_fonts``)."""
    text = "".join(CJK_TERMS_TRAIN + CJK_TERMS_HELDOUT + CJK_SENTENCES_TRAIN + CJK_SENTENCES_HELDOUT)
    text += "0123456789.,%·"
    return "".join(sorted(set(text) - {" "}))
