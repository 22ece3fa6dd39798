"""Extensions of Faust and aiokafka, each naming the upstream behaviour it changes; never imports stream or commands."""
